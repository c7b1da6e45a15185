"""Crypto-shredding benchmark (issue 17): what per-tenant and per-subject keys cost, against one data key per
partition, on the same data in one run.

    .venv/bin/python bench/bench_erasure.py --rows 1000000 --subjects 10000 --tenants 3 --repeat 3

The file layer (what every spark_kms writer and reader runs per Spark task): ``BatchEncryptor`` /
``BatchDecryptor`` over Arrow batches of 65,536 rows, 3 PII columns (email, name, amount) plus a tenant column
and a subject-id column, embedded local KMS, a SQLite subject key store. Modes:

* ``partition``: one data key per encryptor (today's default), AES-GCM in the native batched loop;
* ``tenant``: one data key per tenant (``--tenants``) under the tenant's own KMS key;
* ``subject``: per-subject cells (``AES_256_GCM_SUBJECT``) for ``--subjects`` people: one key derivation per
  (data key, person) and one GCM call per cell in Python, subject keys looked up once per batch;
* ``tenant+subject``: both.

Prints the median seconds of writes (encrypt) and reads (decrypt), the ratio to ``partition``, KMS calls and
subject-store SQL statements, and checks every mode decrypts back to the source. Reads start with a cold
process key cache and a cold subject-key cache each repeat (the KMS unwraps and store look-ups are included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

MODES = ("partition", "tenant", "subject", "tenant+subject")


def dataset(rows: int, subjects: int, tenants: int) -> pa.Table:
    import random

    rnd = random.Random(17)
    people = [f"person-{i:07d}" for i in range(subjects)]
    who = [people[rnd.randrange(subjects)] for _ in range(rows)]
    return pa.table({
        "tenant": [f"t{i % tenants}" for i in range(rows)],
        "user_id": who,
        "email": [None if i % 50 == 0 else f"{w}@example.com" for i, w in enumerate(who)],
        "name": [f"Name {w[-5:]} Surname" for w in who],
        "amount": pa.array([rnd.randrange(-10**6, 10**6) for _ in range(rows)], pa.int64()),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    from spark_kms.crypto import native_available
    from spark_kms.kms import kms_call_counts, process_dek_cache, reset_kms_call_counts
    from spark_kms.kms.local import LocalKms
    from spark_kms.parquet import BatchDecryptor, BatchEncryptor, EncryptionSpec, TenantKeys
    from spark_kms.subjects import SubjectKeyStore
    from spark_kms.subjects._cache import subject_key_cache

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spark_kms_bench_erasure_"))
    kms = LocalKms(workdir / "keystore")
    opts = {"local": {"keystore": str(workdir / "keystore")}}
    kms.create_key(alias="alias/bench")
    kms.create_key(alias="alias/subjects")
    for t in range(args.tenants):
        kms.create_key(alias=f"alias/tenant-t{t}")
    store = SubjectKeyStore.open(f"sqlite://{workdir / 'subjects.db'}", opts, key_uri="local://alias/subjects",
                                 create=True)
    table = dataset(args.rows, args.subjects, args.tenants)
    batches = table.to_batches(max_chunksize=args.batch)
    columns = ["email", "name", "amount"]
    print(f"{args.rows:,} rows, {args.tenants} tenants, {args.subjects:,} people, batches of {args.batch:,}; "
          f"native GCM loop: {native_available()}", flush=True)

    def encryptor(mode: str) -> BatchEncryptor:
        tenant = "tenant" in mode
        subject = "subject" in mode
        return BatchEncryptor(
            EncryptionSpec(columns=columns, subject_column="user_id" if subject else None),
            None if tenant else "local://alias/bench", kms_options=opts,
            tenant_keys=TenantKeys("tenant", "local://alias/tenant-{tenant}") if tenant else None,
            subject_store=store if subject else None,
        )

    results: dict[str, dict[str, object]] = {}
    for mode in MODES:
        writes, reads, kms_w, kms_r, sql_r = [], [], 0, 0, 0
        for _ in range(args.repeat):
            reset_kms_call_counts()
            subject_key_cache().clear()
            start = time.perf_counter()
            with encryptor(mode) as enc:
                out = [enc.encrypt_batch(b) for b in batches]
                key_table = enc.key_table()
            writes.append(time.perf_counter() - start)
            kms_w = sum(kms_call_counts().values())
            process_dek_cache().clear()
            subject_key_cache().clear()
            reset_kms_call_counts()
            before = store.statements
            start = time.perf_counter()
            dec = BatchDecryptor(key_table, kms_options=opts, subject_store=store)
            back = [dec.decrypt_batch(b) for b in out]
            reads.append(time.perf_counter() - start)
            kms_r = sum(kms_call_counts().values())
            sql_r = store.statements - before
        got = pa.Table.from_batches(back)
        if not got.equals(table):
            print(f"{mode}: decrypted data differs from the source", file=sys.stderr)
            return 1
        results[mode] = {"write": statistics.median(writes), "read": statistics.median(reads),
                         "deks": len(key_table.deks), "kms_write": kms_w, "kms_read": kms_r, "sql_read": sql_r}
        r = results[mode]
        print(f"  {mode:<15} write {r['write']:7.2f} s  read {r['read']:7.2f} s  data keys {r['deks']:>3}  "
              f"KMS calls write/read {kms_w}/{kms_r}  store SQL statements per read {sql_r}", flush=True)
    base = results["partition"]
    print("\nratio to one data key per partition (medians of "
          f"{args.repeat}; lower is better):")
    print(f"  {'mode':<15} {'write':>7} {'read':>7}")
    for mode in MODES:
        r = results[mode]
        print(f"  {mode:<15} {r['write'] / base['write']:6.2f}x {r['read'] / base['read']:6.2f}x")
    per_cell = (results["subject"]["read"] - base["read"]) / (args.rows * len(columns)) * 1e6  # type: ignore[operator]
    print(f"\nper-subject read cost over partition keys: {per_cell:.2f} us per cell")
    return 0


if __name__ == "__main__":
    sys.exit(main())
