"""encrypt_into_table's modes (append, overwrite, partition overwrite), its refusals, and decrypt_table."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms import tables
from spark_kms.errors import ConfigurationError

COLUMNS = ["id", "name", "ssn", "email", "amount", "birth", "day"]


def _read(target, kms):
    kw = {k: v for k, v in target.kw.items() if k != "format"}
    return tables.read_table_decrypted(target.uri, kms_options=kms, **kw).sort_by("id").select(COLUMNS)


def test_append_overwrite_and_partition_overwrite(target, source, local_kms):
    kms = local_kms.kms_options
    common = {"columns": ["ssn", "birth"], "key_uri": local_kms.key_uri, "kms_options": kms, **target.kw}
    first, second = source.slice(0, 5), source.slice(5)  # day 2024-01-01, then 2024-01-02
    tables.encrypt_into_table(first, target.uri, partition_by=["day"], **common)
    appended = tables.encrypt_into_table(second, target.uri, mode="append", **common)
    assert appended.files == 1 and _read(target, kms).equals(source.sort_by("id").select(COLUMNS))

    # replace one partition (Delta replaceWhere / Iceberg overwrite filter): the other is untouched
    changed = first.set_column(1, "name", pa.array([f"renamed {i}" for i in range(5)]))
    replaced = tables.encrypt_into_table(changed, target.uri, mode="overwrite", replace_where={"day": "2024-01-01"},
                                         **common)
    assert replaced.details["files_replaced"] == 1
    expected = pa.concat_tables([changed, second]).sort_by("id").select(COLUMNS)
    assert _read(target, kms).equals(expected)
    with pytest.raises(ConfigurationError, match="outside replace_where"):
        tables.encrypt_into_table(second, target.uri, mode="overwrite", replace_where={"day": "2024-01-01"}, **common)

    # dynamic partition overwrite: the partitions the data has are replaced
    tables.encrypt_into_table(second.slice(0, 1), target.uri, mode="overwrite_partitions", **common)
    expected = pa.concat_tables([changed, second.slice(0, 1)]).sort_by("id").select(COLUMNS)
    assert _read(target, kms).equals(expected)
    assert target.own_read().num_rows == expected.num_rows

    # full overwrite, one commit
    tables.encrypt_into_table(source.slice(2, 2), target.uri, mode="overwrite", **common)
    assert _read(target, kms).equals(source.slice(2, 2).select(COLUMNS))
    assert target.own_read().num_rows == 2
    jobs = [job for _op, job in target.operations()]
    assert jobs.count("encrypt") >= 4
    with pytest.raises(ConfigurationError, match="exists"):
        tables.encrypt_into_table(source, target.uri, mode="error", **common)


def test_refusals(target, source, local_kms):
    kms = local_kms.kms_options
    common = {"key_uri": local_kms.key_uri, "kms_options": kms, **target.kw}
    with pytest.raises(ConfigurationError, match="cannot be encrypted"):
        tables.encrypt_into_table(source, target.uri, columns=["ssn", "day"], partition_by=["day"], **common)
    tables.encrypt_into_table(source, target.uri, columns=["ssn"], partition_by=["day"], **common)
    with pytest.raises(ConfigurationError, match="does not fit the table's schema"):
        tables.encrypt_into_table(source, target.uri, columns=["ssn", "name"], **common)  # name would become binary
    with pytest.raises(ConfigurationError, match="partitioned by"):
        tables.encrypt_into_table(source, target.uri, columns=["ssn"], partition_by=["name"], **common)
    with pytest.raises(ConfigurationError, match="replace_where goes with"):
        tables.encrypt_into_table(source, target.uri, columns=["ssn"], replace_where={"day": "x"}, **common)
    with pytest.raises(ConfigurationError, match="scheme"):
        tables.encrypt_into_table(source, target.uri, columns=["ssn"], **{**common, "key_uri": "alias/pii"})
    assert target.own_read().num_rows == source.num_rows  # nothing of the refused writes is visible


def test_decrypt_table_to_plaintext_parquet(tmp_path, target, source, local_kms):
    kms = local_kms.kms_options
    kw = {k: v for k, v in target.kw.items() if k != "format"}
    tables.encrypt_into_table(source, target.uri, columns=["ssn", "amount"], key_uri=local_kms.key_uri,
                              kms_options=kms, partition_by=["day"], **target.kw)
    destination = tmp_path / "plain"
    summary = tables.decrypt_table(target.uri, destination, kms_options=kms, **kw)
    assert summary.ok and summary.rows == source.num_rows and summary.files == 2
    out = pq.read_table(destination).sort_by("id").select(COLUMNS)
    assert out.equals(source.sort_by("id").select(COLUMNS))
    assert (target.root / "_spark_kms_runs" / f"{summary.run_id}.json").exists()  # audit trail stays with the table
    with pytest.raises(ConfigurationError, match="inside the table"):
        tables.decrypt_table(target.uri, target.root / "export", kms_options=kms, **kw)


def test_empty_source(target, source, local_kms):
    kms = local_kms.kms_options
    common = {"columns": ["ssn"], "key_uri": local_kms.key_uri, "kms_options": kms, **target.kw}
    with pytest.raises(ConfigurationError, match="no rows"):
        tables.encrypt_into_table(source.slice(0, 0), target.uri, partition_by=["day"], **common)
    tables.encrypt_into_table(source, target.uri, partition_by=["day"], **common)
    commits = target.metadata_commits()
    appended = tables.encrypt_into_table(source.slice(0, 0), target.uri, **common)
    assert appended.ok and appended.files == 0 and target.metadata_commits() == commits  # nothing committed
    emptied = tables.encrypt_into_table(source.slice(0, 0), target.uri, mode="overwrite",
                                        replace_where={"day": "2024-01-02"}, **common)
    assert emptied.details["files_replaced"] == 1
    assert _read(target, kms).equals(source.slice(0, 5).select(COLUMNS))


def test_logs_hold_no_plaintext_keys_or_secrets(target, source, local_kms, caplog):
    import base64
    import logging

    from spark_kms.kms.local import LocalKms

    kms = {"local": {**local_kms.kms_options["local"], "principal": "etl"}}
    kw = {k: v for k, v in target.kw.items() if k != "format"}
    with caplog.at_level(logging.DEBUG, logger="spark_kms"):
        tables.encrypt_into_table(source, target.uri, columns=["ssn"], key_uri=local_kms.key_uri, kms_options=kms,
                                  **target.kw)
        tables.read_table_decrypted(target.uri, kms_options=kms, **kw)
        LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
        tables.rewrap_table(target.uri, kms_options=kms, **kw)
        tables.reencrypt_table(target.uri, kms_options=kms, **kw)
    text = caplog.text
    assert "re-encrypted" in text and "rewrapped data key" in text  # the jobs do log what they do
    assert "078-05" not in text
    wrapped = [base64.b64encode(e.wrapped_dek).decode() for e in
               tables.load_table_keys(tables.open_table(target.uri, **kw).snapshot()).effective_deks().values()]
    assert wrapped and not any(w in text for w in wrapped)
