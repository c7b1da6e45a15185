"""Spark write/read benchmark: plaintext vs Spark's aes_encrypt vs spark_kms.

One run, one DataFrame (``--rows`` rows, 5 columns: id, amount and 3 PII strings name, email,
ssn), ``--repeat`` repetitions, medians reported::

    .venv/bin/python bench/bench_spark.py --rows 4000000 --repeat 3

Measures (wall clock, driver side):
  write_plain      df.write.parquet
  write_aes        aes_encrypt(col, key, 'GCM') on the 3 PII columns, then df.write.parquet
  write_spark_kms  spark_kms data source (one data key per partition, AES-256-GCM per cell)
  read_plain       spark.read.parquet + count + checksum of the 3 PII columns
  read_spark_kms   read_encrypted (native scan + decrypt UDFs) + count + the same checksum
  read_ds_scan     spark.read.format('spark_kms') (decrypt in the Python reader) + count + the same checksum
Also: ratios, KMS calls, dataset sizes, and the peak RSS of the whole process tree (driver,
JVM, Python workers) sampled from /proc every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _data import PII, benchmark_frame  # noqa: E402


def _tree_rss_bytes(root_pid: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakRss:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_bytes(os.getpid()))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, last = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from spark_kms.crypto import native_available
    from spark_kms.kms.local import LocalKms
    from spark_kms.spark import read_encrypted, write_encrypted
    from spark_kms.spark.session import local_session

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spark_kms_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    ks = workdir / "keystore"
    shutil.rmtree(ks, ignore_errors=True)
    LocalKms(ks).create_key(alias="alias/bench")
    key_uri, opts = "local://alias/bench", {"local": {"keystore": str(ks)}}

    with PeakRss() as rss:
        spark = local_session(args.master, "spark_kms-bench", conf={"spark.driver.memory": "4g"})
        df = benchmark_frame(spark, args.rows, args.partitions)
        paths = {k: workdir / k for k in ("plain", "aes", "spark_kms")}
        aes_key = secrets.token_hex(32)
        checksum = F.sum(F.xxhash64(*PII).cast("decimal(38,0)")).cast("string")

        def write_plain() -> None:
            df.write.mode("overwrite").parquet(str(paths["plain"]))

        def write_aes() -> None:
            cols = [F.expr(f"aes_encrypt({c}, unhex('{aes_key}'), 'GCM')").alias(c) if c in PII else F.col(c)
                    for c in df.columns]
            df.select(*cols).write.mode("overwrite").parquet(str(paths["aes"]))

        def write_kms() -> Any:
            return write_encrypted(df, str(paths["spark_kms"]), key_uri=key_uri, columns=list(PII), kms_options=opts)

        def read_plain() -> Any:
            return tuple(spark.read.parquet(str(paths["plain"])).agg(F.count("*"), checksum).first())

        def read_kms() -> Any:
            return tuple(read_encrypted(spark, str(paths["spark_kms"]), kms_options=opts).agg(F.count("*"), checksum)
                         .first())

        def read_ds_scan() -> Any:
            scan = (spark.read.format("spark_kms").option("kms_options", json.dumps(opts))
                    .load(str(paths["spark_kms"])))
            return tuple(scan.agg(F.count("*"), checksum).first())

        results: dict[str, float] = {}
        results["write_plain"], _ = _timed(write_plain, args.repeat)
        results["write_aes"], _ = _timed(write_aes, args.repeat)
        results["write_spark_kms"], last_write = _timed(write_kms, args.repeat)
        results["read_plain"], plain_sum = _timed(read_plain, args.repeat)
        results["read_spark_kms"], kms_sum = _timed(read_kms, args.repeat)
        results["read_ds_scan"], scan_sum = _timed(read_ds_scan, args.repeat)
        spark.stop()

    assert plain_sum == kms_sum, "decrypted checksum differs from plaintext"
    assert plain_sum == scan_sum, "data source scan checksum differs from plaintext"
    print(f"rows={args.rows:,} partitions={args.partitions} repeat={args.repeat} master={args.master}")
    for k, v in results.items():
        print(f"  {k:<16} {v:8.2f} s (median)")
    print(f"  encrypted write / plaintext write : {results['write_spark_kms'] / results['write_plain']:.2f}x")
    print(f"  aes_encrypt write / spark_kms write: {results['write_aes'] / results['write_spark_kms']:.2f}x")
    print(f"  decrypting read / plaintext read  : {results['read_spark_kms'] / results['read_plain']:.2f}x")
    print(f"  format('spark_kms') scan / plain  : {results['read_ds_scan'] / results['read_plain']:.2f}x")
    print(f"  KMS calls (last encrypted write)  : {last_write.kms_calls} for {len(last_write.files)} files")
    for k, p in paths.items():
        print(f"  size {k:<10} {_size(p) / 1e6:8.1f} MB")
    print(f"  peak RSS (process tree)           : {rss.peak / 1e9:.2f} GB")
    print(f"  checksum ok: {plain_sum == kms_sum == scan_sum}")
    print(f"  native crypto path active         : {native_available()}")


if __name__ == "__main__":
    main()
