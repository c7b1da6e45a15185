"""Rewrap at scale: data keys per second of ``rewrap_dataset``, sequential vs concurrent (issue #16).

    .venv/bin/python bench/bench_rotation.py --mode keys --keys 1000,10000,100000 --kms local,aws \\
        --concurrency 1,16,32 --repeat 1

For each KMS and each number of data keys N, builds a dataset of N data keys once, then per repeat and
per ``kms_concurrency``: rotates the key (a new primary version) and times ``rewrap_dataset`` -- the real
entry point: footers read, one ReEncrypt per data key, the manifest written -- so every run re-wraps all N.
Prints medians, data keys per second and the ratio to the sequential run (``kms_concurrency=1``).

KMSs: ``local`` the embedded KMS (in this process, a file lock per call); ``aws`` the AWS provider over
HTTP against moto's KMS server behind the project's fault proxy (spark_kms/testing/aws.py), run in a
*separate process* so the server's Python does not share this process's GIL.

The fixture is cheap to build: each data file is a one-row Parquet file whose footer key table holds
``--deks-per-file`` DEK entries (no encrypted column: rewrap never reads cells). The wrapped DEKs are real
wraps by the KMS key -- a pool of ``--pool`` GenerateDataKey results, each with its own encryption context,
reused round robin under distinct DEK ids (a KMS's work per ReEncrypt does not depend on which blob it
gets). ``--max-sequential N`` skips sequential runs above N keys and extrapolates them linearly from the
largest measured one (marked ``~``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_SERVE = "--serve-aws"


def _serve_aws() -> None:
    """Child process: the AWS KMS harness (moto + fault proxy); commands on stdin, answers on stdout."""
    from spark_kms.testing.aws import AwsKmsHarness

    harness = AwsKmsHarness(max_attempts=8)
    harness.start()
    print(json.dumps({"key_arn": harness.key_arn, "options": harness._options()}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "rotate":
            harness.rotate()
            print("ok", flush=True)
        elif command == "stats":
            assert harness.proxy is not None
            with harness.proxy.state.lock:
                print(json.dumps(dict(harness.proxy.state.requests_by_operation)), flush=True)
        else:
            break
    harness.stop()


class _AwsServer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.key_uri = f"aws-kms://{hello['key_arn']}"
        self.kms_options = {"aws-kms": hello["options"]}

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def rotate(self) -> None:
        assert self.ask("rotate") == "ok"

    def cpu(self) -> float:
        """CPU seconds (user + system) the server process used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


class _LocalServer:
    def __init__(self, workdir: Path) -> None:
        from spark_kms.kms.local import LocalKms

        keystore = workdir / "keystore"
        self.kms = LocalKms(keystore)
        self.kms.create_key(alias="alias/bench-keys")
        self.key_uri = "local://alias/bench-keys"
        self.kms_options = {"local": {"keystore": str(keystore)}}

    def rotate(self) -> None:
        self.kms.rotate_key("alias/bench-keys")

    def cpu(self) -> float:
        return 0.0  # the embedded KMS runs in this process: its CPU is in this process's

    def close(self) -> None:
        pass


def build_fixture(root: Path, key_uri: str, kms_options: dict[str, Any], n: int, per_file: int, pool: int,
                  concurrency: int) -> None:
    """``n`` DEK entries in ``ceil(n / per_file)`` one-row files under ``root`` (see the module docstring)."""
    from spark_kms.crypto import (
        AES_256_GCM,
        KEY_TABLE_METADATA_KEY,
        DekEntry,
        KeyTable,
        dek_id_hex,
        new_dek_id,
        utc_now_iso,
    )
    from spark_kms.kms import KmsConfig
    from spark_kms.kms.concurrent import bounded_map

    provider = KmsConfig.of(kms_options).provider(key_uri)
    contexts = [{"bench": "rotation", "pool": str(i)} for i in range(min(pool, n))]
    wraps = [k.wrapped for k in bounded_map(provider.generate_data_key, contexts, concurrency=concurrency)]
    root.mkdir(parents=True)
    now = utc_now_iso()
    for f in range(0, n, per_file):
        deks = {}
        for i in range(f, min(n, f + per_file)):
            wrapped, ctx = wraps[i % len(wraps)], contexts[i % len(wraps)]
            dek_id = dek_id_hex(new_dek_id())
            deks[dek_id] = DekEntry(dek_id=dek_id, key_uri=key_uri, key_id=wrapped.key_id,
                                    key_version=wrapped.key_version, wrapped_dek=wrapped.ciphertext,
                                    encryption_context=ctx, algorithm=AES_256_GCM, created_at=now)
        table = pa.table({"id": [f]}).replace_schema_metadata(
            {KEY_TABLE_METADATA_KEY: KeyTable(deks=deks, columns={}).to_json()})
        pq.write_table(table, root / f"part-{f // per_file:07d}.parquet")


def main(argv: Sequence[str], *, workdir: Path | None = None, repeat: int = 1) -> None:
    parser = argparse.ArgumentParser(prog="bench_rotation.py --mode keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", default="1000,10000,100000", help="numbers of data keys, comma-separated")
    parser.add_argument("--kms", default="local,aws", help="local and/or aws")
    parser.add_argument("--concurrency", default="1,16", help="kms_concurrency values; 1 = sequential")
    parser.add_argument("--deks-per-file", type=int, default=1)
    parser.add_argument("--pool", type=int, default=64, help="distinct real wraps the fixture reuses")
    parser.add_argument("--max-sequential", type=int, default=10_000,
                        help="skip kms_concurrency=1 above this many keys (extrapolated)")
    args = parser.parse_args(argv)
    from spark_kms.jobs import rewrap_dataset
    from spark_kms.kms import reset_kms_call_counts

    sizes = [int(x) for x in args.keys.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    workdir = workdir or Path(tempfile.mkdtemp(prefix="spark_kms_bench_rotation_keys_"))
    print(f"rewrap throughput: keys={sizes} kms_concurrency={levels} repeat={repeat} "
          f"deks/file={args.deks_per_file} cpus={os.cpu_count()} workdir={workdir}")
    rows: list[tuple[str, int, int, float | None, str]] = []
    for kms_name in args.kms.split(","):
        server: Any = _AwsServer() if kms_name == "aws" else _LocalServer(workdir / "local")
        try:
            for n in sizes:
                root = workdir / f"{kms_name}-{n}"
                t0 = time.perf_counter()
                build_fixture(root, server.key_uri, server.kms_options, n, args.deks_per_file, args.pool, 16)
                print(f"[{kms_name} {n:,}] fixture built in {time.perf_counter() - t0:.1f}s", flush=True)
                for c in levels:
                    if c == 1 and n > args.max_sequential:
                        rows.append((kms_name, n, c, None, "skipped"))
                        continue
                    times, client_cpu, server_cpu = [], [], []
                    for _ in range(repeat):
                        server.rotate()
                        reset_kms_call_counts()
                        s0, c0, t0 = server.cpu(), time.process_time(), time.perf_counter()
                        summary = rewrap_dataset(root, kms_options=server.kms_options, kms_concurrency=c)
                        times.append(time.perf_counter() - t0)
                        client_cpu.append(time.process_time() - c0)
                        server_cpu.append(server.cpu() - s0)
                        if summary.deks != n:
                            raise SystemExit(f"rewrap rewrapped {summary.deks} of {n} data keys")
                    calls = {k: v for k, v in summary.kms_calls.items() if v}
                    med = statistics.median(times)
                    rows.append((kms_name, n, c, med, json.dumps(calls)))
                    print(f"[{kms_name} {n:,} c={c}] {med:8.2f}s  {n / med:8.0f} keys/s  CPU per key: this process "
                          f"{1000 * statistics.median(client_cpu) / n:.2f} ms, KMS server process "
                          f"{1000 * statistics.median(server_cpu) / n:.2f} ms  calls {calls}", flush=True)
        finally:
            server.close()
    _report(rows)


def _report(rows: list[tuple[str, int, int, float | None, str]]) -> None:
    print()
    print(f"{'kms':6} {'keys':>8} {'conc':>5} {'median s':>10} {'keys/s':>9} {'ms/key':>8} {'vs seq':>8}")
    for kms_name, n, c, med, _calls in rows:
        seq = _sequential_time(rows, kms_name, n)
        if med is None:
            if seq is None:
                continue
            med_s, mark = seq, "~"
        else:
            med_s, mark = med, " "
        ratio = f"{seq / med_s:7.1f}x" if seq and c != 1 else "      -"
        print(f"{kms_name:6} {n:>8,} {c:>5} {mark}{med_s:9.2f} {n / med_s:9.0f} {1000 * med_s / n:8.3f} {ratio}")


def _sequential_time(rows: list[tuple[str, int, int, float | None, str]], kms_name: str, n: int) -> float | None:
    """The measured sequential time for (kms, n), else extrapolated linearly from the largest measured one."""
    measured = {m: med for k, m, c, med, _ in rows if k == kms_name and c == 1 and med is not None}
    if n in measured:
        return measured[n]
    if not measured:
        return None
    largest = max(measured)
    return measured[largest] * n / largest


if __name__ == "__main__":
    if sys.argv[1:] == [_SERVE]:
        _serve_aws()
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        main(sys.argv[1:])
