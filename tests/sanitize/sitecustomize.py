"""Swap in another build of ``spark_kms.crypto._fastgcm``: the ASan + UBSan one that ``make sanitize`` compiles.

``make sanitize`` puts this directory on ``PYTHONPATH`` and names the build in ``SPARK_KMS_FASTGCM_SO``;
Python imports ``sitecustomize`` at start-up, so the swap holds in the test process and in every Python
subprocess the tests start (they inherit the environment, ``LD_PRELOAD`` of libasan included). The extension
built into the source tree by ``pip install -e .`` is never touched. Without ``SPARK_KMS_FASTGCM_SO`` this
module does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec

_NAME = "spark_kms.crypto._fastgcm"
_PATH = os.environ.get("SPARK_KMS_FASTGCM_SO", "")


class _OtherBuild:
    """A meta path finder that answers for the one extension module only."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name != _NAME:
            return None
        return importlib.util.spec_from_file_location(name, _PATH)


if _PATH:
    if not os.path.isfile(_PATH):
        raise SystemExit(f"SPARK_KMS_FASTGCM_SO names no file: {_PATH}")
    sys.meta_path.insert(0, _OtherBuild)
