"""Adapters named by a Hugging Face hub id (``org/name``) on the command line: downloaded with
``huggingface_hub.snapshot_download`` (adapter files only) where a network exists; a clear
one-line error otherwise (``HF_HUB_OFFLINE=1`` or no connection)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import AdapterError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "README.md", "*.json"]


def looks_like_hub_id(s: str) -> bool:
    """``org/name`` that is not an existing path and does not start like a path."""
    return bool(_HUB_ID.match(s)) and not Path(s).exists() and not s.startswith((".", "/", "~"))


def resolve_adapter_arg(arg: str | os.PathLike) -> str:
    """A local folder for an ``--adapters`` / ``--adapter`` value: an existing path unchanged, a
    hub id downloaded to the Hugging Face cache (safetensors and JSON files only; pickled weights
    are never fetched).

    Raises:
        AdapterError: a hub id while offline or unreachable, or a repository that does not exist;
            the message names the id and what to do.
    """
    s = str(arg)
    if not looks_like_hub_id(s):
        return s
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline:
        raise AdapterError(f"{s}: no such local folder, and as a Hugging Face hub id it cannot be downloaded "
                           "because HF_HUB_OFFLINE=1 is set; download it where a network exists "
                           f"(huggingface-cli download {s}) and pass the local folder")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=s, allow_patterns=ADAPTER_FILES)
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one clear line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise AdapterError(f"{s}: no such local folder, and downloading it as a Hugging Face hub id failed "
                           f"({type(e).__name__}: {first}); check the id and the network, or pass a local "
                           "folder") from None
