"""The one prompt format shared by training and evaluation, so a skill LoRA learns exactly the
format evaluation asks for.

Instruction data is rendered with the tokenizer's chat template when it has one (SmolLM2 and the
tiny test model use ChatML), else with an Alpaca-style ``### Instruction / ### Response`` template.
Prompt and response are tokenised separately and concatenated, so the boundary between them is
exact for loss masking and for teacher-forced likelihoods.
"""

from __future__ import annotations

from typing import Any

from .errors import DataError

IGNORE_INDEX = -100

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


def user_text(instruction: str, input: str | None = None) -> str:
    """The user turn: the instruction, then the input (if any) after a blank line."""
    instruction = (instruction or "").strip()
    if input and str(input).strip():
        return f"{instruction}\n\n{str(input).strip()}"
    return instruction


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, instruction: str, input: str | None = None, system: str | None = None,
                  style: str = "auto") -> str:
    """The prompt text up to where the model's answer starts.

    Args:
        style: ``auto`` (chat template if the tokenizer has one, else ``alpaca``), ``chat``, ``alpaca``.
    """
    if style == "auto":
        style = "chat" if has_chat_template(tokenizer) else "alpaca"
    if style == "chat":
        msgs = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": user_text(instruction, input)})
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if style == "alpaca":
        if input and str(input).strip():
            return ALPACA_PROMPT.format(ctx=", paired with an input that provides further context", instruction=instruction.strip(),
                                        input_block=f"### Input:\n{str(input).strip()}\n\n")
        return ALPACA_PROMPT.format(ctx="", instruction=instruction.strip(), input_block="")
    raise ValueError(f"unknown prompt style {style!r}; use auto, chat or alpaca")


def response_suffix(tokenizer: Any, style: str = "auto") -> str:
    """Text that ends a response (end-of-turn / end-of-sequence token)."""
    if style == "auto":
        style = "chat" if has_chat_template(tokenizer) else "alpaca"
    eos = tokenizer.eos_token or ""
    return eos


def encode_pair(tokenizer: Any, prompt: str, response: str, *, cutoff_len: int | None = None,
                train_on_inputs: bool = False, add_eos: bool = True, where: str = "record") -> dict[str, list[int]]:
    """Tokenise prompt and response separately and concatenate.

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` (lists of int, same length); labels are
        ``IGNORE_INDEX`` (-100) on prompt tokens unless ``train_on_inputs``. The response is
        truncated to fit ``cutoff_len``.

    Raises:
        DataError: the prompt alone is ``cutoff_len`` tokens or longer (names ``where``).
    """
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_text = response + (response_suffix(tokenizer) if add_eos else "")
    r_ids = tokenizer(r_text, add_special_tokens=False)["input_ids"]
    if cutoff_len is not None:
        if len(p_ids) >= cutoff_len:
            raise DataError(f"{where}: prompt is {len(p_ids)} tokens, not shorter than the cutoff length {cutoff_len}")
        r_ids = r_ids[: cutoff_len - len(p_ids)]
    ids = p_ids + r_ids
    labels = (list(p_ids) if train_on_inputs else [IGNORE_INDEX] * len(p_ids)) + list(r_ids)
    return {"input_ids": ids, "labels": labels}
