"""The one prompt format shared by training and evaluation, so a skill LoRA learns exactly the
format evaluation asks for.

Instruction data is rendered with the tokenizer's chat template when it has one (SmolLM2 and the
tiny test model use ChatML), else with an Alpaca-style ``### Instruction / ### Response`` template.
Prompt and response are tokenised separately and concatenated, so the boundary between them is
exact for loss masking and for teacher-forced likelihoods.

Special tokens: every encode path (training pairs, raw-text chunks, generation prompts,
likelihoods) starts a sequence with :func:`encode_prompt`, which gives exactly the start tokens the
tokenizer itself adds (``tokenizer(text)``: BOS for Llama-2, nothing for SmolLM2), once, also when
a chat template already wrote them into the text; continuations (responses) get none.
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


def start_tokens(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text on its own (``tokenizer(text)`` vs
    ``tokenizer(text, add_special_tokens=False)``): ``[bos_id]`` for BOS-adding tokenizers such as
    Llama-2's, ``[]`` for SmolLM2's. End tokens (an EOS some tokenizers append) are not included."""
    probe = "a"
    with_sp = list(tokenizer(probe)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    n = len(plain)
    for i in range(len(with_sp) - n + 1):
        if with_sp[i:i + n] == plain:
            return with_sp[:i]
    return []


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as the start of a sequence: the tokenizer's start tokens
    (:func:`start_tokens`, e.g. BOS) exactly once, then the text. When the text already begins with
    them (a chat template that writes ``bos_token``), they are not added again.

    Returns:
        list of int token ids.
    """
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    start = start_tokens(tokenizer)
    if start and ids[:len(start)] != start:
        ids = start + ids
    return ids


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` continuing a sequence (no BOS or other special tokens added)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


class PromptTooLong(DataError):
    """The prompt alone does not fit the cutoff length."""


class ResponseTooLong(DataError):
    """Prompt + response (with its end token) exceed the cutoff length: the response would lose its end.

    Attributes:
        n_prompt, n_response: token counts; ``cutoff_len``: the limit.
    """

    def __init__(self, message: str, n_prompt: int, n_response: int, cutoff_len: int):
        super().__init__(message)
        self.n_prompt, self.n_response, self.cutoff_len = n_prompt, n_response, cutoff_len


def encode_pair(tokenizer: Any, prompt: str, response: str, *, cutoff_len: int | None = None,
                train_on_inputs: bool = False, add_eos: bool = True, where: str = "record",
                truncate_response: bool = False) -> dict[str, list[int]]:
    """Tokenise prompt (:func:`encode_prompt`, start tokens such as BOS once) and response
    (:func:`encode_continuation`) separately and concatenate.

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` (lists of int, same length); labels are
        ``IGNORE_INDEX`` (-100) on prompt tokens unless ``train_on_inputs``. A response that does
        not fit ``cutoff_len`` is cut to fit only with ``truncate_response``.

    Raises:
        PromptTooLong: the prompt alone is ``cutoff_len`` tokens or longer (names ``where``).
        ResponseTooLong: prompt + response exceed ``cutoff_len`` and not ``truncate_response``.
    """
    p_ids = encode_prompt(tokenizer, prompt)
    r_text = response + (response_suffix(tokenizer) if add_eos else "")
    r_ids = encode_continuation(tokenizer, r_text)
    if cutoff_len is not None:
        if len(p_ids) >= cutoff_len:
            raise PromptTooLong(f"{where}: prompt is {len(p_ids)} tokens, not shorter than the cutoff length {cutoff_len}")
        room = cutoff_len - len(p_ids)
        if len(r_ids) > room and not truncate_response:
            raise ResponseTooLong(f"{where}: prompt ({len(p_ids)} tokens) + response ({len(r_ids)} tokens) exceed the "
                                  f"cutoff length {cutoff_len}; the response would lose its last {len(r_ids) - room} "
                                  "tokens", len(p_ids), len(r_ids), cutoff_len)
        r_ids = r_ids[:room]
    ids = p_ids + r_ids
    labels = (list(p_ids) if train_on_inputs else [IGNORE_INDEX] * len(p_ids)) + list(r_ids)
    return {"input_ids": ids, "labels": labels}
