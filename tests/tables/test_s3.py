"""An Iceberg table on S3 (moto's S3 server over HTTP): data, metadata, key manifests, journals and the lock
are objects; spark_kms's storage options reach pyiceberg's FileIO through spark_kms.tables.options.

Delta on S3 is covered by the option mapping only (tests/tables/test_detect.py): delta-rs's S3 client
(object_store) waits on moto's answer to an empty listing -- which delta-rs makes on every table load --
until its 180 s retry timeout, so delta-rs cannot be run against moto's server here.
"""

from __future__ import annotations

import pyarrow as pa

from spark_kms import tables
from spark_kms.kms.local import LocalKms


def test_iceberg_table_on_s3_lifecycle(tmp_path, s3, s3_prefix, source, local_kms):
    kms = local_kms.kms_options
    catalog = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": s3.uri(f"{s3_prefix}/wh")}
    kw = {"storage_options": s3.options, "catalog_properties": catalog}
    uri = "iceberg://s3cat/crm.people"
    columns = ["id", "ssn", "amount", "day"]
    expected = source.sort_by("id").select(columns)

    tables.encrypt_into_table(source, uri, columns=["ssn", "amount"], key_uri=local_kms.key_uri, kms_options=kms,
                              partition_by=["day"], **kw)
    read = tables.read_table_decrypted(uri, columns=columns, kms_options=kms, **kw)
    assert read.sort_by("id").equals(expected)
    scan = tables.table_scan(uri, **kw)
    assert all(f.startswith(f"s3://{s3.bucket}/{s3_prefix}/wh/") for f in scan.files)

    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    assert tables.rewrap_table(uri, kms_options=kms, **kw).deks == 2
    assert tables.reencrypt_table(uri, kms_options=kms, vacuum_retention_hours=0, **kw).files == 2
    LocalKms(local_kms.keystore_dir).destroy_key_version("alias/pii", 1)
    assert tables.read_table_decrypted(uri, columns=columns, kms_options=kms, **kw).sort_by("id").equals(expected)

    keys = s3.keys(f"{s3_prefix}/wh/")
    assert any("/_spark_kms_runs/" in k and k.endswith(".state.json") for k in keys)
    data = [k for k in keys if "/data/" in k and k.endswith(".parquet")]
    assert len(data) == 2 and all("reencrypt" in k for k in data)  # the old files were deleted by the expiry
    assert isinstance(read, pa.Table)
