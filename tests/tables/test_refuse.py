"""Snapshots whose correct reading needs more than their file list are refused with a clear error, never read
wrongly: Delta deletion vectors and column mapping, Iceberg positional delete files, Iceberg renamed columns.

How the snapshots are made:

* Delta deletion vectors: delta-rs 1.6 writes none (its ``delete`` rewrites files, even with
  ``delta.enableDeletionVectors``). The test enables the feature through delta-rs, then writes one commit by
  hand following the Delta protocol (a ``remove`` + ``add`` of the same file with an inline deletion vector:
  a RoaringBitmapArray, Z85-encoded); delta-rs's own ``DeltaTable.deletion_vectors()`` decodes it.
* Iceberg delete files: pyiceberg 0.12 writes none (its merge-on-read delete falls back to copy-on-write). The
  test writes a positional delete file and commits it with pyiceberg's own manifest writer and snapshot
  producer; pyiceberg's own scan then applies it (one row fewer), which proves the snapshot is well formed.
"""

from __future__ import annotations

import json
import os
import struct
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_kms import tables
from spark_kms.errors import ConfigurationError

Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def _z85(data: bytes) -> str:
    data += b"\0" * (-len(data) % 4)
    out = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            chunk.append(Z85[value % 85])
            value //= 85
        out.extend(reversed(chunk))
    return "".join(out)


def _deletion_vector(rows: list[int]) -> bytes:
    """A Delta deletion vector: magic, then a RoaringBitmapArray of one 32-bit roaring bitmap (array container)."""
    bitmap = struct.pack("<II", 12346, 1) + struct.pack("<HH", 0, len(rows) - 1)
    bitmap += struct.pack("<I", len(bitmap) + 4) + b"".join(struct.pack("<H", r) for r in sorted(rows))
    return struct.pack("<i", 1681511377) + struct.pack("<q", 1) + struct.pack("<i", 0) + bitmap


def test_delta_deletion_vectors_are_refused(tmp_path, source, local_kms):
    from deltalake import DeltaTable

    root = tmp_path / "dv"
    kms = local_kms.kms_options
    tables.encrypt_into_table(source, root, format="delta", columns=["ssn"], key_uri=local_kms.key_uri, kms_options=kms)
    dt = DeltaTable(str(root))
    dt.alter.set_table_properties({"delta.enableDeletionVectors": "true"})
    # enabled but unused: still readable
    assert tables.read_table_decrypted(root, kms_options=kms).num_rows == source.num_rows
    dt = DeltaTable(str(root))
    path = os.path.relpath(tables.snapshot_files(root)[0], root)
    size = os.path.getsize(root / path)
    vector = _deletion_vector([1])
    now = int(time.time() * 1000)
    actions = [
        {"commitInfo": {"timestamp": now, "operation": "DELETE", "operationParameters": {"predicate": "id = 2"}}},
        {"remove": {"path": path, "dataChange": True, "deletionTimestamp": now, "extendedFileMetadata": True,
                    "partitionValues": {}, "size": size}},
        {"add": {"path": path, "partitionValues": {}, "size": size, "modificationTime": now, "dataChange": True,
                 "stats": json.dumps({"numRecords": source.num_rows}),
                 "deletionVector": {"storageType": "i", "pathOrInlineDv": _z85(vector), "sizeInBytes": len(vector),
                                    "cardinality": 1}}},
    ]
    log = root / "_delta_log" / f"{dt.version() + 1:020d}.json"
    log.write_text("\n".join(json.dumps(a) for a in actions) + "\n")
    selection = pa.table(DeltaTable(str(root)).deletion_vectors()).column("selection_vector").to_pylist()
    assert selection == [[i != 1 for i in range(source.num_rows)]]  # delta-rs reads the vector we wrote

    for call in (lambda: tables.read_table_decrypted(root, kms_options=kms), lambda: tables.table_scan(root),
                 lambda: tables.snapshot_files(root), lambda: tables.inspect_table(root, kms_options=kms),
                 lambda: tables.reencrypt_table(root, kms_options=kms, force=True)):
        with pytest.raises(ConfigurationError, match="deletion vectors") as err:
            call()
        assert "deleted rows" in str(err.value)
    # the version before the delete has no deletion vector: time travel to it still reads
    assert tables.read_table_decrypted(root, version=1, kms_options=kms).num_rows == source.num_rows


def test_delta_column_mapping_is_refused(tmp_path, source, local_kms):
    from deltalake import DeltaTable

    root = tmp_path / "mapped"
    tables.encrypt_into_table(source, root, format="delta", columns=["ssn"], key_uri=local_kms.key_uri,
                              kms_options=local_kms.kms_options)
    log = sorted((root / "_delta_log").glob("*.json"))[0]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line]
    for action in lines:  # as Spark's Delta writes a table created with column mapping
        if "metaData" in action:
            action["metaData"]["configuration"]["delta.columnMapping.mode"] = "name"
    log.write_text("\n".join(json.dumps(a) for a in lines) + "\n")
    assert DeltaTable(str(root)).metadata().configuration["delta.columnMapping.mode"] == "name"
    with pytest.raises(ConfigurationError, match="column mapping"):
        tables.read_table_decrypted(root, kms_options=local_kms.kms_options)


def _add_position_delete(table, data_path: str, position: int) -> None:
    """Commit one positional delete file with pyiceberg's own manifest writer and snapshot producer."""
    from pyiceberg.manifest import (
        DataFile,
        DataFileContent,
        FileFormat,
        ManifestContent,
        ManifestEntry,
        ManifestEntryStatus,
        ManifestWriterV2,
    )
    from pyiceberg.table.snapshots import Operation
    from pyiceberg.table.update.snapshot import _FastAppendFiles
    from pyiceberg.typedef import Record

    location = table.location() + "/data/pos-delete-1.parquet"
    local = location.replace("file://", "")
    schema = pa.schema([
        pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": b"2147483546"}),
        pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": b"2147483545"}),
    ])
    pq.write_table(pa.table({"file_path": [data_path], "pos": [position]}, schema=schema), local)
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES, file_path=location, file_format=FileFormat.PARQUET,
        partition=Record(), record_count=1, file_size_in_bytes=os.path.getsize(local), sort_order_id=None,
        spec_id=table.spec().spec_id, equality_ids=None, key_metadata=None,
    )

    class DeleteManifestWriter(ManifestWriterV2):
        def content(self):
            return ManifestContent.DELETES

        @property
        def _meta(self):
            return {**super()._meta, "content": "deletes"}

    class AddDeletes(_FastAppendFiles):
        def _manifests(self):
            manifests = super()._manifests()
            writer = DeleteManifestWriter(self._transaction.table_metadata.spec(), self.schema(),
                                          self.new_manifest_output(), self._snapshot_id, self._compression)
            with writer:
                writer.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id,
                                                   sequence_number=None, file_sequence_number=None,
                                                   data_file=delete_file))
            return [*manifests, writer.to_manifest_file()]

    with table.transaction() as tx, AddDeletes(operation=Operation.DELETE, transaction=tx, io=table.io):
        pass


def test_iceberg_delete_files_are_refused(source, local_kms, iceberg_catalog):
    from pyiceberg.catalog import load_catalog

    uri = "iceberg://test/crm.deletes"
    kms = local_kms.kms_options
    kw = {"catalog_properties": iceberg_catalog}
    tables.encrypt_into_table(source, uri, columns=["ssn"], key_uri=local_kms.key_uri, kms_options=kms, **kw)
    table = load_catalog("test", **iceberg_catalog).load_table("crm.deletes")
    before = table.current_snapshot().snapshot_id
    _add_position_delete(table, tables.snapshot_files(uri, **kw)[0], 1)
    table = load_catalog("test", **iceberg_catalog).load_table("crm.deletes")
    assert table.scan().to_arrow().num_rows == source.num_rows - 1  # pyiceberg applies the delete file

    for call in (lambda: tables.read_table_decrypted(uri, kms_options=kms, **kw),
                 lambda: tables.table_scan(uri, **kw), lambda: tables.rewrap_table(uri, kms_options=kms, **kw),
                 lambda: tables.reencrypt_table(uri, kms_options=kms, force=True, **kw)):
        with pytest.raises(ConfigurationError, match="delete file") as err:
            call()
        assert "deleted rows" in str(err.value)
    assert tables.read_table_decrypted(uri, version=before, kms_options=kms, **kw).num_rows == source.num_rows


def test_iceberg_renamed_encrypted_column_is_refused(source, local_kms, iceberg_catalog):
    from pyiceberg.catalog import load_catalog

    uri = "iceberg://test/crm.renamed"
    kw = {"catalog_properties": iceberg_catalog}
    tables.encrypt_into_table(source, uri, columns=["ssn"], key_uri=local_kms.key_uri,
                              kms_options=local_kms.kms_options, **kw)
    table = load_catalog("test", **iceberg_catalog).load_table("crm.renamed")
    with table.update_schema() as update:
        update.rename_column("ssn", "tax_id")
    with pytest.raises(ConfigurationError, match="renamed the column"):
        tables.read_table_decrypted(uri, kms_options=local_kms.kms_options, **kw)
