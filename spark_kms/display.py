"""Deprecated alias of :mod:`spark_kms.notebook` (the notebook helpers' name in 0.1.0).

``from spark_kms import display`` shadowed the ``display()`` function of Jupyter and Databricks in a
notebook's namespace. It keeps working, with a :class:`DeprecationWarning`; write instead::

    from spark_kms import notebook as skn
"""

from __future__ import annotations

import warnings

from spark_kms import notebook as _notebook
from spark_kms.notebook import *  # noqa: F403 (the same public names, the same objects)
from spark_kms.notebook import __all__  # noqa: F401

warnings.warn(
    "spark_kms.display is deprecated (it shadows the notebook's own display()); "
    "use `from spark_kms import notebook as skn` instead",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> object:
    # Private helpers and constants of 0.1.0 (e.g. display._table) resolve to the module's own.
    return getattr(_notebook, name)
