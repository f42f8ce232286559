"""Content hashes for the experiment runner's step cache.

A step's *key* is the SHA-256 of a canonical JSON document holding everything its output depends
on: the step kind and options, the base model's fingerprint, the checksums of the data files it
reads, and the content checksums of the outputs of the steps it consumes. A step is done when its
output folder exists and its marker (``RUN_DIR/steps/<step id>.json``) records the same key, so

- a re-run with the same config does nothing (every key matches);
- deleting one output folder (or its marker) re-does only that step, and the steps downstream
  only if its new output differs in content;
- changing an option re-does the steps whose key it enters.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..paths import atomic_write_text
from ..provenance import sha256_file

MARKER_VERSION = 1


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace variance (tuples as lists, Paths as str)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def hash_obj(obj: Any) -> str:
    """Hex SHA-256 of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def canonical_adapter_config(path: Path) -> str:
    """Hash of a PEFT ``adapter_config.json`` that ignores key order and the order of
    ``target_modules`` (PEFT stores it from a Python set, so its order changes between runs)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return sha256_file(path)
    if isinstance(cfg, dict) and isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(map(str, cfg["target_modules"]))
    return hash_obj(cfg)


class FileHasher:
    """SHA-256 of files and folders, memoised by (path, size, mtime_ns) in a JSON file so a big
    base model is hashed once per run folder, not once per step.

    Args:
        memo: JSON file holding the memo (created on first save), or None for in-memory only.
    """

    def __init__(self, memo: str | Path | None = None):
        self.memo_path = Path(memo) if memo else None
        self._memo: dict[str, list] = {}
        if self.memo_path and self.memo_path.is_file():
            try:
                self._memo = json.loads(self.memo_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self._memo = {}
        self._dirty = False

    def file(self, path: str | Path) -> str:
        """Hex SHA-256 of one file's bytes."""
        p = Path(path).resolve()
        st = p.stat()
        k = str(p)
        m = self._memo.get(k)
        if m and m[0] == st.st_size and m[1] == st.st_mtime_ns:
            return m[2]
        h = sha256_file(p)
        self._memo[k] = [st.st_size, st.st_mtime_ns, h]
        self._dirty = True
        return h

    def tensors(self, path: str | Path) -> str:
        """Hex SHA-256 of a ``.safetensors`` file's *tensors* (sorted names, dtypes, shapes and
        bytes), ignoring header metadata and storage order, so two writers of the same weights agree."""
        p = Path(path).resolve()
        st = p.stat()
        k = "tensors:" + str(p)
        m = self._memo.get(k)
        if m and m[0] == st.st_size and m[1] == st.st_mtime_ns:
            return m[2]
        from safetensors import safe_open

        import torch

        h = hashlib.sha256()
        try:
            with safe_open(str(p), framework="pt") as f:
                for name in sorted(f.keys()):
                    t = f.get_tensor(name).contiguous()
                    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                    h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            out = h.hexdigest()
        except Exception:  # not a readable safetensors file: fall back to its bytes
            out = "file:" + self.file(p)
        self._memo[k] = [st.st_size, st.st_mtime_ns, out]
        self._dirty = True
        return out

    def folder(self, path: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
        """Relative path -> SHA-256 of every regular file under ``path`` (names in ``exclude`` and
        hidden files skipped)."""
        root = Path(path)
        out: dict[str, str] = {}
        for f in sorted(root.rglob("*")):
            rel = f.relative_to(root)
            if not f.is_file() or any(part.startswith(".") for part in rel.parts) or rel.name in exclude:
                continue
            out[str(rel)] = self.file(f)
        return out

    def folder_digest(self, path: str | Path) -> str:
        """One hex digest of what a step output *computes with*: the tensors of its ``*.safetensors``
        files and its ``adapter_config.json`` (logs, info files with timings and plots are left out, so an output
        re-made with identical weights has the same digest). Folders without weights: all files."""
        files = self.folder(path)
        core = {k: self.tensors(Path(path) / k) for k in files if k.endswith(".safetensors")}
        for k in files:
            if Path(k).name == "adapter_config.json":
                core[k] = canonical_adapter_config(Path(path) / k)
        return hash_obj(core or files)

    def model_fingerprint(self, ref: str) -> dict[str, Any]:
        """Identity of a base model: for a local folder, the checksums of its config, tokenizer and
        weight files; for a hub id, the id itself."""
        p = Path(ref)
        if not p.is_dir():
            return {"ref": ref}
        files = {}
        for f in sorted(p.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix in (".json", ".safetensors", ".model", ".txt", ".jinja", ".bin"):
                files[f.name] = self.file(f)
        return {"files": files}

    def save(self) -> None:
        if self.memo_path and self._dirty:
            atomic_write_text(self.memo_path, json.dumps(self._memo))
            self._dirty = False


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker JSON of a finished step, or None when absent/unreadable."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) else None


def write_marker(path: Path, data: dict[str, Any]) -> None:
    """Write a step marker atomically (temp file + rename)."""
    atomic_write_text(path, json.dumps({"version": MARKER_VERSION, **data}, indent=1, default=str))


def is_done(marker: Path, out: Path, key: str) -> bool:
    """A step is done when its output exists and its marker records ``key``."""
    m = read_marker(marker)
    return bool(m) and m.get("key") == key and out.exists()


def remove_path(p: Path) -> None:
    """Remove a file or folder if present."""
    import shutil

    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        os.unlink(p)


def copy_finished(src: Path, dst: Path, steps: list, task_labels: list[str]) -> list[str]:
    """Seed run folder ``dst`` from run folder ``src`` (``lorasoups run --from``): for every step of
    ``steps`` (:class:`.plan.Step`, outputs under ``dst``) copy its output folder and marker from
    the same relative paths under ``src`` (evaluation steps: each task folder of ``task_labels``
    and its marker) where ``src`` holds both and ``dst`` holds neither; also the file-hash memo when
    ``dst`` has none. ``src`` is only read. Nothing is trusted beyond what the markers' keys prove:
    the runner re-does a copied step whose key no longer matches.

    Returns:
        the copied ids (``<step id>`` or ``eval/<label>/<task>``).
    """
    import shutil

    done: list[str] = []

    def copy(rel_out: Path, rel_marker: str, sid: str) -> None:
        s_out, s_mk = src / rel_out, src / "steps" / rel_marker
        d_out, d_mk = dst / rel_out, dst / "steps" / rel_marker
        if not (s_out.exists() and s_mk.is_file()) or d_mk.exists() or d_out.exists() or read_marker(s_mk) is None:
            return
        d_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = d_out.with_name(f".{d_out.name}.seed-tmp")
        remove_path(tmp)
        (shutil.copytree if s_out.is_dir() else shutil.copy2)(s_out, tmp)
        tmp.rename(d_out)
        d_mk.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s_mk, d_mk)
        done.append(sid)

    for st in steps:
        rel = st.out.relative_to(dst)
        if st.stage == "eval":
            for t in task_labels:
                copy(rel / t, f"{st.id}/{t}.json", f"{st.id}/{t}")
        else:
            copy(rel, f"{st.id}.json", st.id)
    memo = dst / "steps" / "file_hashes.json"
    if not memo.exists() and (src / "steps" / "file_hashes.json").is_file():
        memo.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "steps" / "file_hashes.json", memo)
    return done
