"""Path helpers shared by the reader and the writer."""

from __future__ import annotations

import os

__all__ = ["local_path"]


def local_path(path: str | os.PathLike[str]) -> str:
    """A local filesystem path; Spark hands out ``file:/x`` and ``file:///x`` URIs for local paths."""
    text = os.fspath(path)
    if text.startswith("file://"):
        return text[len("file://") :]
    if text.startswith("file:"):
        return text[len("file:") :]
    return text
