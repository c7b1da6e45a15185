"""inspect_dataset and needs_rotation before and after rotation jobs (embedded KMS)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

import spark_kms.jobs
from spark_kms import notebook as skn
from spark_kms.crypto import AES_256_GCM, AES_256_SIV, HMAC_SHA256_BIDX
from spark_kms.errors import ConfigurationError, KeyNotFoundError
from spark_kms.jobs import inspect_dataset, needs_rotation, reencrypt_dataset, rewrap_dataset
from spark_kms.kms import kms_call_counts, reset_kms_call_counts
from spark_kms.kms.local import LocalKms


def test_inspect_lists_files_deks_columns_and_makes_one_describe_call(dataset):
    insp = inspect_dataset(dataset.root, kms_options=dataset.kms_options)

    assert kms_call_counts() == {"local:DescribeKey": 1}  # one per key, not per file or DEK
    assert insp.rows == dataset.expected.num_rows == sum(f.rows for f in insp.files)
    assert [f.path for f in insp.files] == [str(Path(p).relative_to(dataset.root)) for p in dataset.files()]
    assert all(len(f.dek_ids) == 2 and f.size > 0 for f in insp.files)  # its GCM DEK + the shared SIV DEK
    assert len(insp.deks) == 5 and {d.source for d in insp.deks} == {"footer"}
    assert {d.algorithm for d in insp.deks} == {AES_256_GCM, AES_256_SIV}
    siv = [d for d in insp.deks if d.algorithm == AES_256_SIV]
    assert len(siv) == 1 and siv[0].files == 4
    assert {(c.name, c.algorithm, c.arrow_type, c.source) for c in insp.columns} == {
        ("email", AES_256_GCM, "string", None), ("amount", AES_256_GCM, "double", None),
        ("ssn", AES_256_SIV, "string", None), ("email_bidx", HMAC_SHA256_BIDX, "string", "email"),
    }
    assert insp.behind_files == [] and insp.up_to_date is True
    (key,) = insp.keys
    assert key.primary_version == "1" and key.deks == 5 and key.deks_behind == 0
    json.dumps(insp.to_dict())  # JSON-serialisable
    html = skn.view(insp)._repr_html_()
    assert "date=2024-01-01/part-0.parquet" in html and "<table>" in html and "up to date" in html


def test_inspect_and_needs_rotation_follow_rotation_jobs(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    opts = dataset.kms_options
    assert needs_rotation(dataset.root, kms_options=opts) is False
    kms.rotate_key("alias/pii")

    insp = inspect_dataset(dataset.root, kms_options=opts)
    assert len(insp.behind_files) == 4 and insp.up_to_date is False
    assert insp.keys[0].primary_version == "2" and insp.keys[0].deks_behind == 5
    assert needs_rotation(dataset.root, kms_options=opts) is True
    assert needs_rotation(dataset.root, min_version=2, kms_options=opts) is True

    rewrap_dataset(dataset.root, kms_options=opts)
    insp = inspect_dataset(dataset.root, kms_options=opts)
    assert insp.behind_files == [] and {d.source for d in insp.deks} == {"manifest"}
    assert insp.manifest_entries == 5
    assert insp.runs[0]["job"] == "rewrap" and insp.runs[0]["status"] == "succeeded"
    assert needs_rotation(dataset.root, kms_options=opts) is False
    assert needs_rotation(dataset.root, min_version=2, kms_options=opts) is False
    assert needs_rotation(dataset.root, min_version=3, kms_options=opts) is True
    # DEK age is what re-encryption (not rewrap) resets.
    assert needs_rotation(dataset.root, max_age=timedelta(0), kms_options=opts) is True
    assert needs_rotation(dataset.root, max_age=1, kms_options=opts) is False  # days

    kms.rotate_key("alias/pii")
    reencrypt_dataset(dataset.root, kms_options=opts)
    insp = inspect_dataset(dataset.root, kms_options=opts)
    assert insp.behind_files == [] and {d.key_version for d in insp.deks} == {"3"}
    assert {d.source for d in insp.deks} == {"footer"} and insp.manifest_entries == 0


def test_inspect_survives_an_unreachable_key_but_needs_rotation_does_not(dataset, tmp_path):
    other = {"local": {"keystore": str(tmp_path / "empty-keystore")}}
    reset_kms_call_counts()
    insp = inspect_dataset(dataset.root, kms_options=other)
    assert insp.up_to_date is None and insp.keys[0].error and "KeyNotFoundError" in insp.keys[0].error
    assert all(f.behind is None for f in insp.files)
    with pytest.raises(KeyNotFoundError):
        needs_rotation(dataset.root, kms_options=other)


def test_needs_rotation_rejects_bad_arguments(dataset):
    with pytest.raises(ConfigurationError, match="max_age"):
        needs_rotation(dataset.root, max_age=-1, kms_options=dataset.kms_options)
    with pytest.raises(ConfigurationError, match="min_version"):
        needs_rotation(dataset.root, min_version="v2", kms_options=dataset.kms_options)
    with pytest.raises(ConfigurationError, match="does not exist"):
        inspect_dataset(dataset.root / "nope")


def test_render_inspection_shows_paths_and_errors_verbatim():
    # Paths, key URIs and KMS error messages are data: "[/x]" in one used to crash the CLI's
    # table with a rich MarkupError, and "[b]" vanished.
    from rich.console import Console

    from spark_kms.jobs.inspect import DatasetInspection, FileInspection, KeyInspection
    from spark_kms.report import render_inspection

    insp = DatasetInspection(
        path="/data/[/x]", rows=1, files=[FileInspection("p[/y].parquet", 1, 10, ["ab"], {}, None)], deks=[],
        columns=[], keys=[KeyInspection("local://alias/[b]k", None, None, None, 1, None, error="E: [/z] denied")],
        manifest_entries=0,
    )
    console = Console(record=True, width=300)
    console.print(render_inspection(insp))
    text = console.export_text()
    assert all(s in text for s in ("/data/[/x]", "p[/y].parquet", "local://alias/[b]k", "E: [/z] denied"))


def test_jobs_hold_data_and_leave_drawing_to_the_presentation_layer():
    # jobs/ sits below spark_kms.report and spark_kms.notebook: no rich, no HTML in it.
    jobs_dir = Path(spark_kms.jobs.__file__).parent
    for source in sorted(jobs_dir.glob("*.py")):
        text = source.read_text("utf-8")
        assert not re.search(r"^\s*(import|from) (rich|html)\b", text, re.M), f"{source.name} draws"
        assert "<table" not in text and "<td" not in text, f"{source.name} builds HTML"
    assert not hasattr(spark_kms.jobs.DatasetInspection, "_repr_html_")
