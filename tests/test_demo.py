"""``spark-kms demo`` end to end through click, on a small dataset."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.parquet import list_data_files, read_key_table

pytestmark = pytest.mark.spark


def test_demo_runs_end_to_end(spark, tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--rows", "2000", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Footer key table of part-" in out
    assert "'local:GenerateDataKey': 4" in out  # one data key per non-empty partition
    assert "OK" in out and "2,200 rows decrypt" in out
    versions = sorted(
        entry.key_version
        for f in list_data_files(tmp_path / "demo" / "customers")
        for entry in read_key_table(f).deks.values()
    )
    assert versions == ["1"] * 4 + ["2"] * 4  # batch 1 on version 1, batch 2 on version 2
    assert "@example.org" not in out  # no plaintext PII printed


def test_demo_fails_cleanly_on_a_bad_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli, ["demo", "--rows", "10", "--workdir", str(blocker)])
    assert result.exit_code != 0
    assert "file" in result.output
