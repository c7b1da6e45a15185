"""Crypto-shredding through the Spark layer (issue #17): per-tenant keys and per-subject cells written by the
``spark_kms`` data source and ``write_encrypted``; one tenant's KMS key scheduled for deletion and one subject
erased; then every Spark reader -- ``read_encrypted`` (Python UDFs and the JVM fast path), ``format("spark_kms")``,
SQL ``kms_decrypt`` -- returns the other values unchanged and the erased ones as null (or fails with
ErasedDataError, ``on_erased="raise"``), and ``count_erased`` counts them exactly.

Real parts: a local KMS keystore, a SQLite subject key store (its URL passed, so Python workers reopen it), the
session's local Spark. The writers' Python workers keep the subject keys they used in their process cache for
``$SPARK_KMS_SUBJECT_CACHE_TTL_S`` (300 s, documented); the readers name the same store by an equivalent URL
(``..././subjects.db``), a separate cache scope, as a fresh process would.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spark_kms.errors import ConfigurationError, ErasedDataError
from spark_kms.spark import (
    count_erased,
    errors_translated,
    read_encrypted,
    register_functions,
    write_encrypted,
)
from spark_kms.spark.datasource import register as register_source

N = 300
TENANTS = ("t0", "t1", "t2")
ERASED_TENANT = "t1"
ERASED_SUBJECT = "p000"  # a person of tenant t0


@dataclass(frozen=True)
class World:
    keystore: Path
    kms_options: dict[str, Any]
    store_url: str  # the writers'
    reader_url: str  # the same store, another URL (another cache scope)
    source: dict[str, tuple[str, str, int]]  # person -> (tenant, email, age)
    by_source: Path  # format("spark_kms"): tenant keys (template) + subject column
    by_write: Path  # write_encrypted: tenant keys (mapping) + subject column
    tenant_only: Path  # write_encrypted: tenant keys only


def erased_person(person: str, tenant: str, *, subject: bool = True) -> bool:
    return tenant == ERASED_TENANT or (subject and person == ERASED_SUBJECT)


@pytest.fixture(scope="module")
def world(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> World:
    from spark_kms.kms.local import LocalKms
    from spark_kms.subjects import SubjectKeyStore

    root = tmp_path_factory.mktemp("erasure_spark")
    keystore = root / "keystore"
    kms = LocalKms(keystore)
    kms.create_key(alias="alias/pii")
    for tenant in TENANTS:
        kms.create_key(alias=f"alias/tenant-{tenant}")
    kms_options = {"local": {"keystore": str(keystore)}}
    store_url = f"sqlite://{root / 'subjects.db'}"
    SubjectKeyStore.open(store_url, kms_options, key_uri="local://alias/pii", create=True).close()

    source = {f"p{i:03d}": (TENANTS[i % 3], f"p{i:03d}@example.com", 20 + i) for i in range(N)}
    rows = [(p, t, e, a) for p, (t, e, a) in source.items()]
    df = spark.createDataFrame(rows, "person string, tenant string, email string, age long").repartition(3)

    by_source = root / "by_source"
    (df.write.format("spark_kms").mode("overwrite")
       .option("columns", "email,age")
       .option("tenant_column", "tenant")
       .option("tenant_keys", "local://alias/tenant-{tenant}")
       .option("subject_column", "person")
       .option("subject_store", store_url)
       .option("kms_options", json.dumps(kms_options))
       .save(str(by_source)))
    by_write = root / "by_write"
    write_encrypted(df, str(by_write), columns=["email", "age"], kms_options=kms_options, tenant_column="tenant",
                    tenant_keys={"t0": "local://alias/tenant-t0", "*": "local://alias/tenant-{tenant}"},
                    subject_column="person", subject_store=store_url)
    tenant_only = root / "tenant_only"
    write_encrypted(df, str(tenant_only), columns=["email", "age"], kms_options=kms_options,
                    tenant_column="tenant", tenant_keys="local://alias/tenant-{tenant}")

    # Erasure: the tenant's KMS key is scheduled for deletion, the subject's key deleted.
    kms.schedule_key_deletion(f"alias/tenant-{ERASED_TENANT}", 7)
    SubjectKeyStore.open(store_url, kms_options).erase(ERASED_SUBJECT, reason="test")
    return World(keystore, kms_options, store_url, f"sqlite://{root}/./subjects.db", source, by_source, by_write,
                 tenant_only)


def expected(world: World, *, subject: bool = True) -> dict[str, tuple[str, str | None, int | None]]:
    return {p: (t, None, None) if erased_person(p, t, subject=subject) else (t, e, a)
            for p, (t, e, a) in world.source.items()}


def rows_of(df: Any) -> dict[str, tuple[Any, ...]]:
    with errors_translated():
        return {r["person"]: (r["tenant"], r["email"], r["age"]) for r in df.collect()}


def test_written_by_tenant_with_per_subject_cells(world: World) -> None:
    """The footers name one data key per (task, tenant), each under its tenant's KMS key, and per-subject
    column specs; cells are ordinary (tenant-only) or per-subject cells."""
    from spark_kms.crypto import AES_256_GCM, AES_256_GCM_SUBJECT
    from spark_kms.parquet.dataset import read_dataset_key_table

    for path in (world.by_source, world.by_write):
        table = read_dataset_key_table(str(path))
        assert {e.key_uri for e in table.deks.values()} == {f"local://alias/tenant-{t}" for t in TENANTS}
        assert all(e.encryption_context["spark_kms.tenant"] == e.key_uri.rsplit("-", 1)[1]
                   for e in table.deks.values())
        assert {n: (s.algorithm, s.subject) for n, s in table.columns.items()} == {
            "email": (AES_256_GCM_SUBJECT, "person"), "age": (AES_256_GCM_SUBJECT, "person")}
    table = read_dataset_key_table(str(world.tenant_only))
    assert {s.algorithm for s in table.columns.values()} == {AES_256_GCM}


@pytest.mark.parametrize("which", ["by_source", "by_write"])
def test_read_encrypted_python_path(spark: Any, world: World, which: str) -> None:
    path = str(getattr(world, which))
    df = read_encrypted(spark, path, kms_options=world.kms_options, subject_store=world.reader_url,
                        fast_path=False)
    assert rows_of(df) == expected(world)
    # The subject column is fed to the UDFs even when the result leaves it out.
    only = read_encrypted(spark, path, columns=["email"], kms_options=world.kms_options,
                          subject_store=world.reader_url, fast_path=False)
    with errors_translated():
        emails = sorted(r[0] for r in only.collect() if r[0] is not None)
    assert emails == sorted(e for p, (t, e, _a) in world.source.items() if not erased_person(p, t))


def test_read_encrypted_fast_path_falls_back(spark: Any, world: World, caplog: pytest.LogCaptureFixture) -> None:
    from spark_kms.spark import fastpath

    assert fastpath.jar_path() is not None, "the fast-path jar is not built: run `make jar`"
    spark.conf.set(fastpath.CONF_SWITCH, "true")
    try:
        with caplog.at_level(logging.INFO, logger="spark_kms.spark.fastpath"):
            df = read_encrypted(spark, str(world.tenant_only), kms_options=world.kms_options, fast_path=True)
        assert rows_of(df) == expected(world, subject=False)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("erased" in m and "local://alias/tenant-t1" in m for m in warnings), warnings
        assert not any("decrypted in the JVM" in r.getMessage() for r in caplog.records)
        # Per-subject columns never take the fast path; the read works with it switched on.
        df = read_encrypted(spark, str(world.by_write), kms_options=world.kms_options,
                            subject_store=world.reader_url, fast_path="auto")
        assert rows_of(df) == expected(world)
    finally:
        spark.conf.set(fastpath.CONF_SWITCH, "false")


def test_format_reader(spark: Any, world: World) -> None:
    for path in (world.by_source, world.by_write):
        df = (spark.read.format("spark_kms").option("kms_options", json.dumps(world.kms_options))
              .option("subject_store", world.reader_url).load(str(path)))
        assert rows_of(df) == expected(world)
    # A schema without the subject column: the reader still reads it to decrypt.
    df = (spark.read.format("spark_kms").schema("email string, tenant string")
          .option("kms_options", json.dumps(world.kms_options)).option("subject_store", world.reader_url)
          .load(str(world.by_source)))
    with errors_translated():
        got = sorted(((r["tenant"], r["email"]) for r in df.collect()), key=repr)
    assert got == sorted(((t, None if erased_person(p, t) else e) for p, (t, e, _a) in world.source.items()),
                         key=repr)
    df = (spark.read.format("spark_kms").option("kms_options", json.dumps(world.kms_options))
          .load(str(world.tenant_only)))
    assert rows_of(df) == expected(world, subject=False)


def _sql_rows(spark: Any, view: str) -> dict[str, tuple[Any, ...]]:
    df = spark.sql(f"SELECT person, tenant, kms_decrypt(email, 'email', person) AS email, "
                   f"kms_decrypt_bigint(age, 'age', person) AS age FROM {view}")
    return rows_of(df)


def test_sql_kms_decrypt(spark: Any, world: World) -> None:
    register_functions(spark, kms_options=world.kms_options, subject_store=world.reader_url)
    for path in (world.by_source, world.by_write):
        assert _sql_rows(spark, f"parquet.`{path}`") == expected(world)
    # Rows that did not come straight from a file: the key tables of datasets= registered.
    register_functions(spark, kms_options=world.kms_options, subject_store=world.reader_url,
                       datasets=[str(world.by_write)])
    spark.read.parquet(str(world.by_write)).repartition(2).createOrReplaceTempView("erasure_shuffled")
    assert _sql_rows(spark, "erasure_shuffled") == expected(world)
    df = spark.sql(f"SELECT person, tenant, kms_decrypt(email) AS email, kms_decrypt_bigint(age) AS age "
                   f"FROM parquet.`{world.tenant_only}`")
    assert rows_of(df) == expected(world, subject=False)
    # A per-subject column without its subject column: a clear ConfigurationError.
    with pytest.raises(ConfigurationError, match="encrypted per subject, by column 'person'"):
        rows_of(spark.sql(f"SELECT person, tenant, kms_decrypt(email, 'email') AS email, 1 AS age "
                          f"FROM parquet.`{world.by_source}`"))


def test_on_erased_raise(spark: Any, world: World) -> None:
    df = read_encrypted(spark, str(world.by_write), kms_options=world.kms_options, subject_store=world.reader_url,
                        fast_path=False, on_erased="raise")
    with pytest.raises(ErasedDataError, match="erased"):
        rows_of(df)
    # Only rows of live tenants and subjects: nothing erased is read, nothing raised.
    live = df.where("tenant = 't2'")
    with errors_translated():
        assert len(live.collect()) == N // 3
    df = (spark.read.format("spark_kms").option("kms_options", json.dumps(world.kms_options))
          .option("on_erased", "raise").load(str(world.tenant_only)))
    with pytest.raises(ErasedDataError):
        rows_of(df)
    spark.conf.set("spark.spark_kms.onErased", "raise")
    try:
        register_functions(spark, kms_options=world.kms_options, subject_store=world.reader_url)
        with pytest.raises(ErasedDataError):
            _sql_rows(spark, f"parquet.`{world.by_source}`")
    finally:
        spark.conf.unset("spark.spark_kms.onErased")
        register_functions(spark, kms_options=world.kms_options)
        register_source(spark)
    with pytest.raises(ConfigurationError, match="on_erased"):
        read_encrypted(spark, str(world.by_write), kms_options=world.kms_options, on_erased="ignore")


def test_count_erased(spark: Any, world: World) -> None:
    erased = sum(1 for p, (t, _e, _a) in world.source.items() if erased_person(p, t))
    assert erased == N // 3 + 1
    for path in (world.by_source, world.by_write):
        assert count_erased(spark, str(path), kms_options=world.kms_options, subject_store=world.reader_url) == \
            {"email": erased, "age": erased}
    assert count_erased(spark, str(world.tenant_only), kms_options=world.kms_options, columns=["age"]) == \
        {"age": N // 3}
    with pytest.raises(ConfigurationError, match="no encrypted columns"):
        count_erased(spark, str(world.tenant_only), kms_options=world.kms_options, columns=["tenant"])


def test_decrypt_udf_needs_the_subject_column(spark: Any, world: World) -> None:
    from spark_kms.parquet.dataset import read_dataset_key_table
    from spark_kms.spark.udfs import decrypt_udf

    table = read_dataset_key_table(str(world.by_source))
    spec = table.columns["email"]
    udf = decrypt_udf("email", spec.arrow_type, table.deks, world.kms_options, spec=spec,
                      subject_store=world.reader_url)
    df = spark.read.parquet(str(world.by_source))
    with errors_translated():
        got = {r[0]: r[1] for r in df.select("person", udf(df.email, df.person)).collect()}
    assert got == {p: e for p, (_t, e, _a) in expected(world).items()}
    with pytest.raises(ConfigurationError, match="encrypted per subject, by column 'person'"):
        with errors_translated():
            df.select(udf(df.email)).collect()


def test_bad_combinations_refused_before_staging(spark: Any, world: World, tmp_path: Path) -> None:
    df = spark.createDataFrame([("p1", "t0", "a@b.c")], "person string, tenant string, email string")
    target = tmp_path / "refused"
    with pytest.raises(ConfigurationError, match="tenant_column"):
        write_encrypted(df, str(target), columns=["email"], kms_options=world.kms_options,
                        tenant_keys="local://alias/tenant-{tenant}")
    with pytest.raises(ConfigurationError, match="deterministic"):
        write_encrypted(df, str(target), deterministic_columns=["email"], kms_options=world.kms_options,
                        tenant_column="tenant", tenant_keys="local://alias/tenant-{tenant}")
    with pytest.raises(ConfigurationError, match="subject_column"):
        write_encrypted(df, str(target), columns=["email"], kms_options=world.kms_options,
                        key_uri="local://alias/pii", subject_column="nobody", subject_store=world.store_url)
    with pytest.raises(ConfigurationError, match="key_uri"):
        write_encrypted(df, str(target), columns=["email"], kms_options=world.kms_options)
    with pytest.raises(ConfigurationError, match="must contain"):
        with errors_translated():
            (df.write.format("spark_kms").mode("overwrite").option("columns", "email")
               .option("tenant_column", "tenant").option("tenant_keys", "local://alias/one-key")
               .option("kms_options", json.dumps(world.kms_options)).save(str(target)))
    assert not target.exists() or not any(os.scandir(target))


def test_ml_transformers(spark: Any, world: World, tmp_path: Path) -> None:
    """ColumnEncryptor with tenant keys (a JSON mapping) and per-subject cells; a tenant and a subject erased
    after the write; ColumnDecryptor returns them as null (or raises), count_erased counts them."""
    from spark_kms.kms.local import LocalKms
    from spark_kms.spark import ColumnDecryptor, ColumnEncryptor
    from spark_kms.subjects import SubjectKeyStore

    LocalKms(world.keystore).create_key(alias="alias/tenant-t3")
    source = {f"m{i:03d}": ("t0" if i % 2 == 0 else "t3", f"m{i:03d}@example.com", i) for i in range(30)}
    df = spark.createDataFrame([(p, t, e, a) for p, (t, e, a) in source.items()],
                               "person string, tenant string, email string, age long")
    encryptor = ColumnEncryptor(
        inputCols=["email", "age"], tenantColumn="tenant",
        tenantKeys={"t0": "local://alias/tenant-t0", "t3": "local://alias/tenant-t3"},
        subjectColumn="person", subjectStore=world.store_url, kmsOptions=world.kms_options,
    )
    path = str(tmp_path / "ml")
    with errors_translated():
        encryptor.transform(df).write.parquet(path)
    LocalKms(world.keystore).schedule_key_deletion("alias/tenant-t3", 7)
    SubjectKeyStore.open(world.store_url, world.kms_options).erase("m000")

    decryptor = ColumnDecryptor(kmsOptions=world.kms_options, subjectStore=world.reader_url)
    got = rows_of(decryptor.transform(spark.read.parquet(path)))
    assert got == {p: (t, None, None) if t == "t3" or p == "m000" else (t, e, a) for p, (t, e, a) in source.items()}
    with pytest.raises(ErasedDataError):
        rows_of(ColumnDecryptor(kmsOptions=world.kms_options, subjectStore=world.reader_url, onErased="raise")
                .transform(spark.read.parquet(path)))
    with pytest.raises(ConfigurationError, match="encrypted per subject"):
        ColumnDecryptor(kmsOptions=world.kms_options).transform(spark.read.parquet(path).drop("person"))
    assert count_erased(spark, path, kms_options=world.kms_options, subject_store=world.reader_url) == \
        {"email": 16, "age": 16}


def test_encrypt_udf_per_tenant_and_subject(spark: Any, world: World, tmp_path: Path) -> None:
    from spark_kms.crypto import AES_256_GCM_SUBJECT
    from spark_kms.spark import read_key_registry
    from spark_kms.spark.udfs import decrypt_udf, encrypt_udf

    registry = tmp_path / "registry"
    df = spark.createDataFrame([(f"u{i}", TENANTS[i % 2 * 2], f"u{i}@example.com") for i in range(20)],
                               "person string, tenant string, email string")
    encrypt = encrypt_udf("email", None, kms_options=world.kms_options, key_registry=registry,
                          tenant_column="tenant", tenant_keys="local://alias/tenant-{tenant}",
                          subject_column="person", subject_store=world.store_url)
    path = str(tmp_path / "udf")
    with errors_translated():
        df.select("person", "tenant", encrypt(df.email, df.tenant, df.person).alias("email")).write.parquet(path)
    table = read_key_registry(registry)
    assert table.columns["email"].algorithm == AES_256_GCM_SUBJECT
    assert {e.key_uri for e in table.deks.values()} == {"local://alias/tenant-t0", "local://alias/tenant-t2"}
    stored = spark.read.parquet(path)
    spec = table.columns["email"]
    decrypt = decrypt_udf("email", spec.arrow_type, table.deks, world.kms_options, spec=spec,
                          subject_store=world.reader_url)
    with errors_translated():
        got = {r[0]: r[1] for r in stored.select("person", decrypt(stored.email, stored.person)).collect()}
    assert got == {f"u{i}": f"u{i}@example.com" for i in range(20)}
    # Checked on the driver, when the UDF is made.
    with pytest.raises(ConfigurationError, match="plain column"):
        encrypt_udf("email", None, kms_options=world.kms_options, key_registry=registry, tenant_column="tenant",
                    tenant_keys="local://alias/tenant-{tenant}", subject_column="email")


def test_options_from_the_session_conf(spark: Any, world: World, tmp_path: Path) -> None:
    """``spark.spark_kms.tenantColumn`` / ``tenantKeys`` / ``subjectColumn`` / ``subjectStore`` reach the writer,
    ``subjectStore`` the reader."""
    from pyspark.sql import functions as F  # noqa: N812 - pyspark's convention

    from spark_kms.parquet.dataset import read_dataset_key_table

    settings = {"spark.spark_kms.tenantColumn": "tenant",
                "spark.spark_kms.tenantKeys": "local://alias/tenant-{tenant}",
                "spark.spark_kms.subjectColumn": "person", "spark.spark_kms.subjectStore": world.store_url}
    df = spark.createDataFrame([(f"c{i}", "t2", f"c{i}@example.com") for i in range(6)],
                               "person string, tenant string, email string")
    path = str(tmp_path / "conf")
    for name, value in settings.items():
        spark.conf.set(name, value)
    try:
        write_encrypted(df, path, columns=["email"], kms_options=world.kms_options)
        table = read_dataset_key_table(path)
        assert {e.key_uri for e in table.deks.values()} == {"local://alias/tenant-t2"}
        assert table.columns["email"].subject == "person"
        spark.conf.set("spark.spark_kms.subjectStore", world.reader_url)
        read = read_encrypted(spark, path, kms_options=world.kms_options, fast_path=False)
        got = rows_of(read.withColumn("age", F.lit(None)))
        assert got == {f"c{i}": ("t2", f"c{i}@example.com", None) for i in range(6)}
    finally:
        for name in settings:
            spark.conf.unset(name)
        register_source(spark)  # the data source keeps the conf of its last registration
