"""The README's Python example runs as written (against the session's Spark)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_example() -> None:
    assert _python_blocks()


@pytest.mark.spark
@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_example_runs(spark, index: int, capsys) -> None:
    # getOrCreate() in the example returns the suite's session: one SparkContext per JVM.
    exec(compile(_python_blocks()[index], f"README.md python block {index}", "exec"), {})
    shown = capsys.readouterr().out
    assert "078-05-1120" in shown and "ada@example.org" in shown  # decrypted values shown by .show()
