"""Locations (cache home, data dir) and atomic output folders."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DataError, LorasoupsError

REPO_ROOT = Path(__file__).resolve().parents[2]


def lorasoups_home() -> Path:
    """Cache folder: ``$LORASOUPS_HOME`` or ``~/.cache/lorasoups``."""
    return Path(os.environ.get("LORASOUPS_HOME") or Path.home() / ".cache" / "lorasoups")


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where public datasets are looked up, in order: ``data_dir``, ``$LORASOUPS_DATA``,
    ``../shared/data`` next to the repository, ``../shared/data`` next to the working folder."""
    c: list[Path] = []
    if data_dir:
        c.append(Path(data_dir))
    if os.environ.get("LORASOUPS_DATA"):
        c.append(Path(os.environ["LORASOUPS_DATA"]))
    c.append(REPO_ROOT.parent / "shared" / "data")
    c.append(Path.cwd().parent / "shared" / "data")
    out: list[Path] = []
    for p in c:
        if p not in out:
            out.append(p)
    return out


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the first existing data folder.

    Raises:
        DataError: none exists; the message lists every place looked at.
    """
    cands = data_dir_candidates(data_dir)
    if data_dir and not Path(data_dir).is_dir():
        raise DataError(f"data dir {data_dir} does not exist (given with --data-dir)")
    for p in cands:
        if p.is_dir():
            return p.resolve()
    raise DataError(
        "no data folder found; looked in: " + ", ".join(str(p) for p in cands)
        + ". Pass --data-dir or set LORASOUPS_DATA."
    )


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse to write ``out`` where it is (or contains, or is inside) an input folder.

    Raises:
        LorasoupsError: ``out`` would overwrite an input.
    """
    o = Path(out).resolve()
    for i in inputs:
        p = Path(i).resolve()
        if o == p or p in o.parents or o in p.parents:
            raise LorasoupsError(f"output {out} would overwrite input {i}; choose another --out")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success rename it to ``out``.

    On an exception the temporary folder is removed and ``out`` is untouched, so no partial
    output is ever left behind.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
