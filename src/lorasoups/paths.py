"""Locations (cache home, data dir) and atomic output folders."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
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


def current_umask() -> int:
    """The process umask (read from ``/proc/self/status`` where possible, which leaves it
    untouched; else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


def umask_mode(is_dir: bool) -> int:
    """The permission bits a new folder (0o777) or file (0o666) gets under the current umask,
    e.g. 0o755 / 0o644 under umask 022."""
    return (0o777 if is_dir else 0o666) & ~current_umask()


def follow_umask(folder: str | os.PathLike) -> None:
    """Give ``folder`` (made by ``tempfile.mkdtemp``: 0700) and every file in it made by
    ``tempfile.mkstemp`` (0600) the modes that ordinary creation under the umask would give
    (0755 / 0644 under umask 022; executables keep their x bits), so outputs are as readable as
    the user's other files. Entries that already have group or other bits are left as they are."""
    um = current_umask()
    root = Path(folder)
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode) or st.st_mode & 0o077:
            continue
        full = 0o777 if (stat.S_ISDIR(st.st_mode) or st.st_mode & 0o100) else 0o666
        want = full & ~um
        if stat.S_IMODE(st.st_mode) != want:
            os.chmod(p, want)


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def check_writable(out: str | os.PathLike, *, what: str = "output folder") -> None:
    """Check, before any work, that ``out`` can be created (or written into): its nearest existing
    ancestor must be a folder in which a new entry can really be made (a probe folder is created
    and removed, so read-only file systems, permissions, immutable folders and full disks all
    count, for root too). When ``out`` exists as a folder it must be writable as well.

    Raises:
        LorasoupsError: one line naming the path and the reason (e.g. "Read-only file system").
    """
    out = Path(out).expanduser()
    targets = [_nearest_existing(out.parent if out.parent != out else out)]
    if out.is_dir():
        targets.append(out)
    for d in targets:
        if not d.is_dir():
            raise LorasoupsError(f"{what} {out}: cannot be created, {d} is not a folder")
        try:
            probe = tempfile.mkdtemp(prefix=".lorasoups-write-check-", dir=d)
            os.rmdir(probe)
        except OSError as e:
            raise LorasoupsError(f"{what} {out}: cannot write in {d}: {e.strerror or e}") from None


def _name_path(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` as its filename when it has none (a failed ``write`` names no file)."""
    if e.filename is None and e.errno is not None:
        return type(e)(e.errno, e.strerror or str(e), str(path))
    return e


# Files that mark a folder as something lorasoups (or PEFT / transformers) wrote: only such a folder,
# or an empty one, is replaced by --overwrite; anything else could be a user's own work.
OUTPUT_MARKERS = ("adapter_config.json", "config.json", "results.json", "moe_config.json", "merge_info.json",
                  "train_info.json", "cat_options.json", "lorahub_weights.json")


def check_replaceable(out: str | os.PathLike, overwrite: bool) -> None:
    """Check that an existing ``out`` may be replaced: only with ``overwrite``, and only when it is an
    empty folder or a folder holding one of :data:`OUTPUT_MARKERS` (an earlier output).

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False, or ``out`` is not an earlier
            output (a file, or a folder of other things), which ``--overwrite`` never deletes.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; refusing to replace it (choose another output)")
    if any(out.iterdir()) and not any((out / m).exists() for m in OUTPUT_MARKERS):
        raise FileExistsError(f"{out} is not an earlier output (none of {', '.join(OUTPUT_MARKERS[:4])}, ... in it); "
                              f"--overwrite replaces only outputs: choose another folder or empty it yourself")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success rename it to ``out``.

    On an exception the temporary folder is removed and ``out`` is untouched, so no partial
    output is ever left behind. The finished folder and its files get the modes the umask gives
    (0755 / 0644 under umask 022; :func:`follow_umask`), not ``mkdtemp``'s private 0700.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False, or it is not an earlier output
            (:func:`check_replaceable`).
        OSError: the file system refuses (permissions, read-only, disk full); the error names
            ``out`` when the failing call named no file.
    """
    out = Path(out)
    check_replaceable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        follow_umask(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _name_path(e, out) from e
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
    """Write ``text`` to ``path`` through a temporary file and a rename (mode per the umask).

    Raises:
        OSError: the file system refuses; the error names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode(False))  # mkstemp makes 0600; follow the umask like open() would
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _name_path(e, path) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
