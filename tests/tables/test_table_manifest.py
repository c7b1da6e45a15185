"""docs/FORMAT.md section 14: the table key manifest's rules, positive and negative -- a content-addressed object
named by the table property ``spark_kms.key_manifest``."""

from __future__ import annotations

import pytest

from spark_kms.crypto import DekEntry
from spark_kms.errors import FormatError
from spark_kms.storage import resolve
from spark_kms.tables.keys import (
    MANIFEST_PROPERTY,
    manifest_pointer,
    read_table_manifest,
    write_table_manifest,
)

ENTRY = DekEntry(dek_id="00112233445566ff", key_uri="local://alias/pii", key_id="k1", key_version="2",
                 wrapped_dek=b"\x01" * 40, encryption_context={"dataset": "t"}, algorithm="AES_256_GCM_IV12_TAG16",
                 created_at="2026-01-01T00:00:00Z")


def test_a_written_manifest_is_named_by_its_content_and_reads_back(tmp_path) -> None:
    root = resolve(tmp_path)
    pointer = write_table_manifest(root, {ENTRY.dek_id: ENTRY})
    assert manifest_pointer({MANIFEST_PROPERTY: pointer}) == pointer
    entries, got = read_table_manifest(root, {MANIFEST_PROPERTY: pointer})
    assert got == pointer and entries == {ENTRY.dek_id: ENTRY}
    assert write_table_manifest(root, {ENTRY.dek_id: ENTRY}) == pointer  # same content, same object
    assert write_table_manifest(root, {}) == ""  # nothing to record: no object, no property
    assert read_table_manifest(root, {}) == ({}, "")


@pytest.mark.parametrize("bad", ["manifest.json", "_spark_kms/manifests/abc.json", "../x/" + "0" * 64 + ".json"])
def test_a_property_not_naming_a_manifest_object_is_refused(tmp_path, bad: str) -> None:
    with pytest.raises(FormatError, match="is not a spark_kms manifest name"):
        read_table_manifest(resolve(tmp_path), {MANIFEST_PROPERTY: bad})


def test_a_missing_or_altered_manifest_object_is_refused(tmp_path) -> None:
    root = resolve(tmp_path)
    pointer = write_table_manifest(root, {ENTRY.dek_id: ENTRY})
    obj = tmp_path / pointer
    obj.write_bytes(obj.read_bytes().replace(b'"2"', b'"3"'))
    with pytest.raises(FormatError, match="does not hash to its name"):
        read_table_manifest(root, {MANIFEST_PROPERTY: pointer})
    obj.unlink()
    with pytest.raises(FormatError, match="which is missing"):
        read_table_manifest(root, {MANIFEST_PROPERTY: pointer})
