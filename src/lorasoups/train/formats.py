"""Record formats of training data: one record (a dict read from a file) -> a :class:`TextExample`.

Formats (chosen by :func:`lorasoups.train.data.load_source`; see docs/data.md): ``instruction``,
``prompt_completion``, ``messages`` (chat; the target is the last assistant turn), ``qa``,
``mbpp``, ``squad``. Field mapping (:func:`apply_field_map`) renames columns before a record is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import DataError
from ..prompts import render_prompt

#: Field-mapping keys of a data spec (``file.csv:prompt=question,completion=answer``): the record
#: field of that name is read from the given column.
FIELD_KEYS = ("instruction", "input", "output", "prompt", "completion", "messages", "question", "answer", "code",
              "context", "answers")
SQUAD_INSTRUCTION = (
    "Please use the information in the provided context to respond to the question below. "
    "If there is not enough information provided, answer with 'Not in context'.\n\n"
    "Context: {context}. \n\nQuestion: {question}"
)
SQUAD_RESPONSE = "the correct answer is {answer}"


@dataclass(frozen=True)
class TextExample:
    """An instruction-like example before tokenisation.

    Attributes:
        instruction: the task text; ``input``: optional extra input; ``output``: the target response.
        where: ``"<file>: record <i>"`` (0-based index in the file), used in error messages.
        messages: for chat records, the conversation up to and including the assistant turn that
            is the target (``({"role", "content"}, ...)``); None otherwise. ``instruction`` is then
            the last user turn and ``output`` the last assistant turn.
    """

    instruction: str
    input: str
    output: str
    where: str
    messages: tuple[dict[str, str], ...] | None = None


_REQUIRED = {"instruction": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
             "messages": ("messages",), "qa": ("question", "answer"), "mbpp": ("text", "code"),
             "squad": ("context", "question", "answers")}
ROLES = ("system", "user", "assistant")


def _detect_format(rec: dict[str, Any]) -> str | None:
    for fmt in ("instruction", "prompt_completion", "messages", "qa", "mbpp", "squad"):
        if all(k in rec for k in _REQUIRED[fmt]):
            return fmt
    if "instruction" in rec:
        return "instruction"
    return None


def _field(rec: dict[str, Any], key: str, where: str, fmt: str, required: bool = True) -> str:
    v = rec.get(key)
    if v is None:
        if not required:
            return ""
        have = ", ".join(sorted(rec)) or "none"
        if key in rec:
            raise DataError(f"{where}: field {key!r} is null (format {fmt!r})")
        raise DataError(f"{where}: missing field {key!r} for format {fmt!r} (record has fields: {have})")
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
    return str(v)


def record_to_example(rec: dict[str, Any], fmt: str, where: str) -> TextExample | None:
    """Convert one record of format ``fmt`` (not ``text``) to a :class:`TextExample`.

    Returns None for records that are skipped by design (unanswerable SQuAD questions).

    Raises:
        DataError: missing, null or non-string fields, or (``auto``) no known field set; names ``where``.
    """
    if fmt == "auto":
        det = _detect_format(rec)
        if det is None:
            raise DataError(f"{where}: cannot tell the record format from its fields ({', '.join(sorted(rec)) or 'none'}); "
                            "expected instruction/input/output, prompt/completion, messages, question/answer, text/code "
                            "or context/question/answers; set :format=... or map fields, e.g. "
                            ":prompt=COLUMN,completion=COLUMN")
        fmt = det
    if fmt == "instruction":
        return TextExample(_field(rec, "instruction", where, fmt), _field(rec, "input", where, fmt, required=False),
                           _field(rec, "output", where, fmt), where)
    if fmt == "prompt_completion":
        return TextExample(_field(rec, "prompt", where, fmt), "", _field(rec, "completion", where, fmt), where)
    if fmt == "messages":
        return _messages_example(rec.get("messages"), where)
    if fmt == "qa":
        return TextExample(_field(rec, "question", where, fmt), "", _field(rec, "answer", where, fmt), where)
    if fmt == "mbpp":
        code = _field(rec, "code", where, fmt).replace("\r\n", "\n")
        return TextExample(_field(rec, "text", where, fmt), "", code, where)
    if fmt == "squad":
        ctx, q = _field(rec, "context", where, fmt), _field(rec, "question", where, fmt)
        answers = rec.get("answers")
        if not isinstance(answers, list):
            raise DataError(f"{where}: field 'answers' must be a list for format 'squad'")
        texts = [a.get("text") if isinstance(a, dict) else a for a in answers]
        texts = [str(t) for t in texts if t is not None and str(t).strip()]
        if rec.get("is_impossible") or not texts:
            return None
        return TextExample(SQUAD_INSTRUCTION.format(context=ctx.strip().rstrip("."), question=q.strip()), "",
                           SQUAD_RESPONSE.format(answer=texts[0].strip()), where)
    raise DataError(f"{where}: format {fmt!r} is not a record format")


def _messages_example(msgs: Any, where: str) -> TextExample:
    """A chat record -> the conversation up to its last assistant turn (the training target)."""
    if hasattr(msgs, "tolist"):  # a Parquet list column
        msgs = msgs.tolist()
    if isinstance(msgs, str):  # a CSV cell holding the JSON list
        import json

        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError:
            raise DataError(f"{where}: field 'messages' is a string that is not a JSON list") from None
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    clean: list[dict[str, str]] = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{j}] must be an object with a role ({', '.join(ROLES)}) and a "
                            f"string content, got {str(m)[:80]}")
        clean.append({"role": m["role"], "content": m["content"]})
    last = max((j for j, m in enumerate(clean) if m["role"] == "assistant"), default=None)
    if last is None or not any(m["role"] == "user" for m in clean[:last]):
        raise DataError(f"{where}: messages need a user turn followed by an assistant turn (the training target)")
    conv = tuple(clean[:last + 1])
    user = next(m["content"] for m in reversed(conv[:-1]) if m["role"] == "user")
    return TextExample(user, "", conv[-1]["content"], where, messages=conv)


def apply_field_map(rec: dict[str, Any], fields: Sequence[tuple[str, str]], where: str) -> dict[str, Any]:
    """``rec`` with each mapped field read from its column (``fields`` = ``((field, column), ...)``).

    Raises:
        DataError: a mapped column is missing from the record (names ``where`` and the fields it has).
    """
    if not fields:
        return rec
    out = dict(rec)
    for f, col in fields:
        if col not in rec:
            raise DataError(f"{where}: field map {f}={col}, but the record has no field {col!r} "
                            f"(fields: {', '.join(sorted(rec)) or 'none'})")
        out[f] = rec[col]
    return out


def render_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The prompt text before the final assistant turn of ``messages`` (which must end with it).

    With a chat template: ``apply_chat_template(messages[:-1], add_generation_prompt=True)``.
    Without one: the Alpaca-style blocks of the earlier user/assistant pairs, then the last user
    turn's block (as few-shot demos are rendered, :func:`lorasoups.eval.registry.render_fewshot`);
    a system message is dropped there.
    """
    from ..prompts import has_chat_template

    head = list(messages[:-1])
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
    parts, pending = [], None
    for m in head:
        if m["role"] == "user":
            pending = m["content"]
        elif m["role"] == "assistant" and pending is not None:
            parts.append(render_prompt(tokenizer, pending, style="alpaca") + m["content"] + "\n\n")
            pending = None
    return "".join(parts) + render_prompt(tokenizer, pending or "", style="alpaca")
