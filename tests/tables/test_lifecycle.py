"""The whole life of an encrypted table, for Delta (delta-rs) and Iceberg (pyiceberg, SQL catalog on SQLite):

encrypt -> inspect -> read -> rotate the KMS key -> rewrap -> read -> re-encrypt -> read -> time travel to the
version before the re-encrypt -> vacuum / expire -> the old key version destroyed -> the current data still
reads. Values equal the source at every step, the table's own reader reads the table after every step (no
corruption), and its history shows the commits.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from spark_kms import tables
from spark_kms.errors import ConfigurationError, FormatError, KeyStateError
from spark_kms.kms.local import LocalKms

COLUMNS = ["id", "name", "ssn", "email", "amount", "birth", "day"]


def plain(table: pa.Table) -> pa.Table:
    return table.sort_by("id").select(COLUMNS)


def check_own_reader(target, source: pa.Table) -> None:
    """The table's own library reads every row; the PII columns it sees are ciphertext, not plaintext."""
    own = target.own_read()
    assert own.num_rows == source.num_rows
    assert set(own.column_names) >= {*COLUMNS, "email_bidx", tables.KEYS_COLUMN}
    assert pa.types.is_binary(own.schema.field("ssn").type) or pa.types.is_large_binary(own.schema.field("ssn").type)
    cells = [c for c in own.column("ssn").to_pylist() if c is not None]
    assert cells and not any(b"078-05" in c for c in cells)
    assert own.column("id").to_pylist() and sorted(own.column("id").to_pylist()) == source.column("id").to_pylist()


def test_table_lifecycle(target, source, local_kms):
    kms = local_kms.kms_options
    kw = target.kw
    uri = target.uri

    # -- encrypt: one commit, one data key per partition (file), keys in footers and in the keys column
    written = tables.encrypt_into_table(
        source, uri, columns=["ssn", "amount", "birth"], deterministic_columns=["email"],
        blind_index={"email": "email_bidx"}, key_uri=local_kms.key_uri, kms_options=kms, partition_by=["day"], **kw,
    )
    assert written.ok and written.files == 2 and written.deks == 2 and written.rows == source.num_rows
    assert written.kms_calls["local:GenerateDataKey"] == 3  # two files + the table's deterministic key
    check_own_reader(target, source)
    assert tables.detect_table(target.root) == target.format

    # -- inspect
    seen = tables.inspect_table(uri, kms_options=kms, **_read_kw(kw))
    assert seen.format == target.format and len(seen.files) == 2
    assert all(f.key_source == "footer" and f.behind is False for f in seen.files)
    assert {c.name for c in seen.columns} == {"ssn", "amount", "birth", "email", "email_bidx"}
    assert seen.up_to_date is True and seen.manifest == ""

    # -- read (pyarrow path) and the scan plan for Spark
    assert plain(tables.read_table_decrypted(uri, kms_options=kms, **_read_kw(kw))).equals(plain(source))
    scan = tables.table_scan(uri, **_read_kw(kw))
    assert len(scan.files) == 2 and set(scan.encrypted_columns) == {"ssn", "amount", "birth", "email"}
    assert scan.base_path == (str(target.root) if target.format == "delta" else None)
    subset = tables.read_table_decrypted(uri, columns=["id", "ssn"], kms_options=kms, **_read_kw(kw))
    assert subset.sort_by("id").equals(source.select(["id", "ssn"]))

    # -- rotate the KMS key, then rewrap: one property-only commit, no data file touched
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    assert tables.inspect_table(uri, kms_options=kms, **_read_kw(kw)).behind_files
    files_before = {p: p.read_bytes() for p in target.data_files()}
    commits_before = target.metadata_commits()
    rewrapped = tables.rewrap_table(uri, kms_options=kms, **_read_kw(kw))
    assert rewrapped.ok and rewrapped.deks == 3 and rewrapped.kms_calls["local:ReEncrypt"] == 3
    assert target.metadata_commits() == commits_before + 1
    assert {p: p.read_bytes() for p in target.data_files()} == files_before
    after = tables.inspect_table(uri, kms_options=kms, **_read_kw(kw))
    assert after.up_to_date is True and after.manifest.startswith("_spark_kms/manifests/")
    assert all(d.source == "manifest" for d in after.deks)
    assert plain(tables.read_table_decrypted(uri, kms_options=kms, **_read_kw(kw))).equals(plain(source))
    check_own_reader(target, source)
    again = tables.rewrap_table(uri, kms_options=kms, **_read_kw(kw))  # idempotent: no KMS work, no commit
    assert again.deks == 0 and "local:ReEncrypt" not in again.kms_calls
    assert target.metadata_commits() == commits_before + 1

    # -- re-encrypt in resumable batches: one commit per file here, new files beside the old ones
    before_reencrypt = target.current_version()
    old_files = set(target.data_files())
    redone = tables.reencrypt_table(uri, kms_options=kms, batch_files=1, **_read_kw(kw))
    assert redone.ok and redone.files == 2 and len(redone.details["table_versions"]) == 2
    assert redone.kms_calls["local:GenerateDataKey"] == 2  # the deterministic key is kept: equal cells stay equal
    assert old_files <= set(target.data_files())  # nothing the log references was rewritten or deleted
    assert plain(tables.read_table_decrypted(uri, kms_options=kms, **_read_kw(kw))).equals(plain(source))
    check_own_reader(target, source)
    assert tables.inspect_table(uri, kms_options=kms, **_read_kw(kw)).up_to_date is True
    ops = target.operations()
    assert [job for _op, job in ops].count("reencrypt") == 2 and ops[0][1] == "encrypt"

    # -- time travel to the version before the re-encrypt: the old files, under the rewrapped keys
    travelled = tables.read_table_decrypted(uri, version=before_reencrypt, kms_options=kms, **_read_kw(kw))
    assert plain(travelled).equals(plain(source))
    assert set(tables.snapshot_files(uri, before_reencrypt, **_read_kw(kw))) != set(
        tables.snapshot_files(uri, **_read_kw(kw)))

    # -- vacuum / expire: the old files and the old data keys' manifest entries go
    vacuumed = tables.vacuum_table(uri, retention_hours=0, **_read_kw(kw))
    # the two old per-file keys are pruned; the deterministic key (kept by re-encrypt) stays in the manifest
    assert vacuumed.ok and vacuumed.files == 2 and vacuumed.details["manifest_entries_pruned"] == 2
    assert not (old_files & set(target.data_files()))
    current = tables.inspect_table(uri, kms_options=kms, **_read_kw(kw))
    assert current.manifest_entries == 1
    assert [p.name for p in (target.root / "_spark_kms" / "manifests").glob("*.json")] == [
        current.manifest.rsplit("/", 1)[1]]

    # -- the old key version destroyed: the current data still reads, in full
    LocalKms(local_kms.keystore_dir).destroy_key_version("alias/pii", 1)
    assert plain(tables.read_table_decrypted(uri, kms_options=kms, **_read_kw(kw))).equals(plain(source))
    check_own_reader(target, source)
    with pytest.raises((ConfigurationError, FormatError, OSError)):
        tables.read_table_decrypted(uri, version=before_reencrypt, kms_options=kms, **_read_kw(kw))


def test_old_key_version_destroyed_without_rotation_jobs_fails_loudly(target, source, local_kms):
    """The negative control: destroy the only key version the data keys are under, and reads fail with the KMS's
    error -- never wrong values."""
    kms = local_kms.kms_options
    tables.encrypt_into_table(source, target.uri, columns=["ssn"], key_uri=local_kms.key_uri, kms_options=kms,
                              **target.kw)
    admin = LocalKms(local_kms.keystore_dir)
    admin.rotate_key("alias/pii")
    admin.destroy_key_version("alias/pii", 1)
    with pytest.raises(KeyStateError):
        tables.read_table_decrypted(target.uri, kms_options=kms, **_read_kw(target.kw))
    # plain columns alone need no key
    ids = tables.read_table_decrypted(target.uri, columns=["id"], kms_options=kms, **_read_kw(target.kw))
    assert sorted(ids.column("id").to_pylist()) == source.column("id").to_pylist()


def _read_kw(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k != "format"}
