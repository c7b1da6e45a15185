"""Data written by spark_kms 0.1.0 (format version 1), committed under tests/data/release_0_1_0, still reads."""

from __future__ import annotations

import base64
import datetime
import shutil
from pathlib import Path

import pytest

from spark_kms.jobs import reencrypt_dataset, rewrap_dataset
from spark_kms.kms import process_dek_cache
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_dataset_key_table, read_decrypted_table
from spark_kms.parquet.index import blind_index_values

RELEASE = Path(__file__).resolve().parents[1] / "data" / "release_0_1_0"
ROOT_KEY = bytes(range(32))
EXPECTED = [
    (i, f"user{i % 2}@example.com", None if i == 4 else f"{i:03d}-00-0000", i * 1.25,
     datetime.datetime(2024, 1, 1, 12, i, tzinfo=datetime.timezone.utc))
    for i in range(6)
]


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, dict]:
    copy = tmp_path / "release"
    shutil.copytree(RELEASE, copy)  # today's code tightens and appends to the keystore: never the committed files
    options = {"local": {"keystore": str(copy / "keystore"), "root_key": base64.b64encode(ROOT_KEY).decode()}}
    process_dek_cache().clear()
    return copy / "customers", options


def _rows(table) -> list[tuple]:
    cols = ["id", "email", "ssn", "amount", "seen"]
    return sorted(zip(*(table[c].to_pylist() for c in cols)))


def test_the_files_are_format_version_1() -> None:
    assert {read_dataset_key_table(RELEASE / "customers").format_version} == {1}


def test_release_0_1_0_reads_at_the_root_a_partition_and_a_file(release) -> None:
    root, options = release
    assert _rows(read_decrypted_table(root, kms_options=options)) == EXPECTED
    assert _rows(read_decrypted_table(root / "day=2024-01-02", kms_options=options)) == EXPECTED[3:]
    single = read_decrypted_table(root / "day=2024-01-01" / "part-0.parquet", kms_options=options)
    assert _rows(single) == EXPECTED[:3]
    # The blind index of 0.1.0 still finds equal values.
    table = read_dataset_key_table(root)
    token = blind_index_values(table, "email_bidx", ["user1@example.com"], kms_options=options)[0]
    stored = read_decrypted_table(root, kms_options=options)
    assert [i for i, t in zip(stored["id"].to_pylist(), stored["email_bidx"].to_pylist()) if t == token] == [1, 3, 5]


def test_release_0_1_0_rotates_and_upgrades(release) -> None:
    root, options = release
    kms = LocalKms(Path(options["local"]["keystore"]), root_key=ROOT_KEY)
    kms.rotate_key("alias/pii")
    rewrap_dataset(root, kms_options=options)
    kms.disable_key_version("alias/pii", 1)
    process_dek_cache().clear()
    assert _rows(read_decrypted_table(root, kms_options=options)) == EXPECTED
    reencrypt_dataset(root, kms_options=options)  # rewrites every file as format version 2
    assert read_dataset_key_table(root).format_version == 2
    process_dek_cache().clear()
    assert _rows(read_decrypted_table(root, kms_options=options, min_format_version=2)) == EXPECTED
