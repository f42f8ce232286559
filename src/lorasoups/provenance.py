"""Provenance: package versions, git commit, checksums, and the one record every output carries."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT

PACKAGES = ("lorasoups", "torch", "transformers", "peft", "safetensors", "accelerate", "nevergrad", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide results (``"absent"`` when missing)."""
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``-dirty`` if the tree has changes), or None."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(**extra: Any) -> dict[str, Any]:
    """The provenance record written under ``"provenance"`` by every output (adapters, merges, CAT,
    LoRA Hub, MoE, evaluations, experiment runs): ``{"git_commit", "package_versions", "created"
    (UTC, ISO 8601), **extra}``."""
    return {"git_commit": git_commit(), "package_versions": package_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_dir(path: str | Path) -> dict[str, str]:
    """SHA-256 of every regular file in a folder (relative path -> hex digest)."""
    p = Path(path)
    return {str(f.relative_to(p)): sha256_file(f) for f in sorted(p.rglob("*")) if f.is_file()}
