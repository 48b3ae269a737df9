"""Atomic writes: every file and folder the package writes appears whole or not at all.

* :func:`atomic_write` writes one file through a temporary file in the same folder,
  flushed and fsynced, then renamed over the target (checkpoints, PNG figures);
* :func:`atomic_directory` yields a temporary folder next to the target and renames it
  over the target when the block succeeds (``curvature analyze / compare / train /
  demo`` output folders).

A rename within one file system is atomic on POSIX, so a reader (or a crash) sees the
old content or the new one, never a half-written file or report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from curvature.inputs import InputError

__all__ = ["atomic_directory", "atomic_write"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode(path: Path) -> int:
    """The target's current permissions, or those of a new file (0o666 minus umask)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a binary file object and move the result to ``path`` atomically.

    The file is a temporary one in ``path``'s folder (created if missing) with the
    permissions ``path`` has (or a new file would get); it is flushed and fsynced,
    renamed over ``path``, and the folder is fsynced where the platform allows. On an
    exception the temporary file is removed and ``path`` is untouched. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename (POSIX); not possible everywhere
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; on success it replaces ``out``.

    On an exception the temporary directory is removed and ``out`` is untouched. An
    existing ``out`` directory is replaced as a whole (renamed aside, then deleted).

    Raises:
        InputError: ``out`` exists and is not a directory.
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {str(out)!r} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        umask = _umask()
        for root, dirs, _files in os.walk(tmp):
            for d in dirs:
                os.chmod(Path(root) / d, 0o777 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
