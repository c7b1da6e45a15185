"""Crash-safe small-file writes.

A file is written whole or not at all: bytes go to a sibling temp file in the
same directory (same file system, so the rename is atomic), the temp file is
fsynced, ``os.replace`` swaps it in, and the directory is fsynced so the new
name survives a power cut. A reader sees the old content or the new one, never a
torn mix; a process killed midway leaves at most a ``.<name>.*.tmp`` file that
readers ignore (names starting with ``.`` are not data files).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_dir", "replace_atomically", "sibling_temp_path"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Persist a directory entry change (rename, create). No-op where directories cannot be opened."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def sibling_temp_path(path: str | os.PathLike[str], tag: str = "tmp") -> Path:
    """A fresh hidden path next to ``path`` (``.<name>.<random>.<tag>``) for write-then-rename."""
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{tag}", dir=target.parent)
    os.close(fd)
    return Path(name)


def replace_atomically(temp_path: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """fsync ``temp_path``, rename it over ``path``, fsync the directory."""
    with open(temp_path, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(temp_path, path)
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def _cleanup_on_error(temp_path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            temp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp + fsync + os.replace + dir fsync)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = sibling_temp_path(target)
    with _cleanup_on_error(temp):
        with open(temp, "wb") as fh:
            fh.write(data)
        replace_atomically(temp, target)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
