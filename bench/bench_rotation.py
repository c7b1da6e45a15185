"""Rotation benchmark: rewrap vs full re-encryption of the benchmark dataset, in one run; and rewrap
throughput in data keys per second at scale (``--mode keys``).

    .venv/bin/python bench/bench_rotation.py --rows 4000000 --repeat 3
    .venv/bin/python bench/bench_rotation.py --mode keys --keys 1000,10000,100000 --kms local,aws

``--mode keys`` is in bench/bench_rotation_keys.py (see there).

Writes the benchmark dataset (bench/_data.py) once with the spark_kms data source, then
``--repeat`` times: rotate the key and time ``rewrap_dataset`` (every DEK re-wrapped by the new
version, no cell touched), rotate again and time ``reencrypt_dataset`` (new DEKs, every cell
re-encrypted, files replaced). Prints medians, the ratio (target: rewrap <= 20% of re-encrypt),
KMS calls of each job, and checks the data still decrypts equal at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _data import PII, benchmark_frame  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--mode", choices=("reencrypt", "keys"), default="reencrypt",
                        help="reencrypt: rewrap vs re-encrypt of a Spark dataset; keys: rewrap data keys per second")
    args, rest = parser.parse_known_args()
    if args.mode == "keys":
        from bench_rotation_keys import main as keys_main

        keys_main(rest, workdir=args.workdir, repeat=args.repeat)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    from pyspark.sql import functions as F

    from spark_kms.crypto import native_available
    from spark_kms.jobs import reencrypt_dataset, rewrap_dataset
    from spark_kms.kms.local import LocalKms
    from spark_kms.spark import read_encrypted, write_encrypted
    from spark_kms.spark.session import local_session

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spark_kms_bench_rotation_"))
    keystore = workdir / "keystore"
    kms = LocalKms(keystore)
    kms.create_key(alias="alias/bench")
    key_uri, opts = "local://alias/bench", {"local": {"keystore": str(keystore)}}
    dataset = workdir / "dataset"

    spark = local_session("local[2]", "spark_kms-bench-rotation", conf={"spark.driver.memory": "4g"})
    df = benchmark_frame(spark, args.rows, args.partitions)
    checksum = F.sum(F.xxhash64(*PII).cast("decimal(38,0)")).cast("string")
    expected = df.agg(checksum).first()[0]
    write = write_encrypted(df, str(dataset), key_uri=key_uri, columns=list(PII), kms_options=opts)

    rewrap_s, reencrypt_s = [], []
    rewrap_calls = reencrypt_calls = {}
    for _ in range(args.repeat):
        kms.rotate_key("alias/bench")
        t0 = time.perf_counter()
        rewrap_calls = rewrap_dataset(dataset, kms_options=opts).kms_calls
        rewrap_s.append(time.perf_counter() - t0)
        kms.rotate_key("alias/bench")
        t0 = time.perf_counter()
        reencrypt_calls = reencrypt_dataset(dataset, kms_options=opts).kms_calls
        reencrypt_s.append(time.perf_counter() - t0)
    actual = read_encrypted(spark, str(dataset), kms_options=opts).agg(checksum).first()[0]
    spark.stop()

    rewrap, reencrypt = statistics.median(rewrap_s), statistics.median(reencrypt_s)
    print(f"rows={args.rows:,} files={len(write.files)} repeat={args.repeat} native crypto={native_available()}")
    print(f"  rewrap      {rewrap:8.3f} s (median)   KMS calls {rewrap_calls}")
    print(f"  re-encrypt  {reencrypt:8.3f} s (median)   KMS calls {reencrypt_calls}")
    print(f"  rewrap / re-encrypt: {rewrap / reencrypt:.1%} (target <= 20%)")
    print(f"  data decrypts equal after {2 * args.repeat} rotations: {actual == expected}")
    if actual != expected:
        raise SystemExit("checksum after rotation differs from the plaintext")


if __name__ == "__main__":
    main()
