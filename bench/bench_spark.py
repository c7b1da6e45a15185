"""Spark write/read benchmark: plaintext vs spark_kms (and Parquet Modular Encryption), side by side in one run.

Each (dataset, rows) combination runs in its own child process (so each has its own peak memory),
``--repeat`` repetitions of each step, medians reported. The writes, then the reads, are timed round-robin (each
round runs every step once), so JVM warm-up and the machine's drift fall on all of them alike::

    .venv/bin/python bench/bench_spark.py --rows 1000000,4000000 --dataset both --repeat 3

Datasets (``bench/_data.py``): ``synthetic`` (id, amount, 3 short regular PII strings name, email, ssn)
and ``faker`` (id, amount, 4 realistic PII strings name, email, phone, address in 9 locales, ~5 % nulls;
sampled from a seeded pool inside Spark, so --partitions partitions like the synthetic one).

Steps (wall clock, driver side):
  write_plain         df.write.parquet
  write_aes           (--aes) aes_encrypt(col, key, 'GCM') on the PII columns, then df.write.parquet
  write_spark_kms     spark_kms data source (one data key per partition, AES-256-GCM per cell)
  write_spark_kms_jvm the same through write_encrypted(fast_path=True): cells encrypted in the JVM, Spark's writer
  read_plain          spark.read.parquet + count + checksum of the PII columns
  read_fast           read_encrypted(fast_path=True) (JVM fast path) + count + the same checksum
  read_python         read_encrypted(fast_path=False) (decrypt Arrow UDFs in Python workers) + the same
  read_ds_scan        spark.read.format('spark_kms') (decrypt in the Python reader) + the same
  sel_plain           selective query: amount > 9900 (~1 % of rows), checksum of 1 PII column, plaintext
  sel_fast/_python    the same query through read_encrypted (1 PII column decrypted), fast / Python path
  write/read_spark_pme  Spark's own Parquet Modular Encryption (bench/_spark_pme.py: a JVM KmsClient over the
                      local KMS; --no-spark-pme skips it)
Also: the ratios of issue #16's target table, KMS Decrypt calls per read (the local KMS's audit log), file
sizes, the peak RSS of the whole process tree (driver, JVM, Python workers; /proc every 50 ms) during the
Spark steps, and Parquet Modular Encryption vs spark_kms at the pyarrow level (``bench/_pme.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import _pme  # noqa: E402
import _spark_pme  # noqa: E402
from _data import SELECTIVE_AMOUNT, frame  # noqa: E402

KEY_URI = "local://alias/bench"


def _kind(pid: int) -> str:
    """Which part of the process tree ``pid`` is: the Spark JVM, a Python worker, or this driver."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return "other"
    if argv and argv[0].endswith(b"java"):
        return "jvm"
    if any(a.startswith(b"pyspark.") for a in argv):
        return "python_workers"
    return "driver_python" if pid == os.getpid() else "other"


def _tree_rss(root_pid: int) -> dict[str, int]:
    """RSS of the process tree under ``root_pid`` by kind (:func:`_kind`), bytes."""
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
    out: dict[str, int] = {}
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        kind = _kind(pid)
        out[kind] = out.get(kind, 0) + rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return out


class PeakRss:
    """The peak RSS of this process tree (sampled from /proc every 50 ms): in all, by kind of process
    (the Spark JVM, Python workers, this driver), and per step (:meth:`step` names the current one)."""

    def __init__(self) -> None:
        self.peak = 0
        self.by_kind: dict[str, int] = {}
        self.by_step: dict[str, int] = {}
        self._step = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def step(self, name: str) -> None:
        self._step = name

    def _run(self) -> None:
        while not self._stop.is_set():
            kinds = _tree_rss(os.getpid())
            total = sum(kinds.values())
            self.peak = max(self.peak, total)
            self.by_step[self._step] = max(self.by_step.get(self._step, 0), total)
            for kind, n in kinds.items():
                self.by_kind[kind] = max(self.by_kind.get(kind, 0), n)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rounds(steps: list[tuple[str, Callable[[], Any]]], repeat: int,
            around: Callable[[str, int], Any] | None = None,
            runs: dict[str, list[float]] | None = None) -> dict[str, tuple[float, Any]]:
    """Median seconds and last result of each step, timed round-robin: every round runs each step once, so the
    JVM's warm-up and the machine's noise over time fall on all steps alike rather than on whichever runs first.
    ``around(name, round)`` runs before each timed call and, if it returns a callable, that runs after it; every
    run's seconds go into ``runs``."""
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    last: dict[str, Any] = {}
    for r in range(repeat):
        for name, fn in steps:
            after = around(name, r) if around else None
            t0 = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t0)
            if callable(after):
                after()
    if runs is not None:
        runs.update(times)
    return {name: (statistics.median(times[name]), last[name]) for name, _ in steps}


def _fast_path_conf() -> tuple[dict[str, str], str | None]:
    """The session settings of the JVM fast path, or why there are none."""
    try:
        from spark_kms.spark import fastpath
    except ImportError:
        return {}, "spark_kms.spark.fastpath is missing"
    try:
        return dict(fastpath.spark_conf()), None
    except Exception as exc:  # noqa: BLE001 - e.g. the jar is not built: report and skip the row
        return {}, str(exc)


def run_one(args: argparse.Namespace, dataset: str, rows: int) -> dict[str, Any]:
    """Every step for one dataset and row count, in this process; returns the figures (JSON-able)."""
    from pyspark.sql import functions as F

    from spark_kms.crypto import _native, native_available
    from spark_kms.kms import process_dek_cache
    from spark_kms.kms.local import LocalKms
    from spark_kms.spark import read_encrypted, write_encrypted
    from spark_kms.spark.session import local_session

    workdir = Path(args.workdir) / f"{dataset}_{rows}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ks = workdir / "keystore"
    kms = LocalKms(ks)
    kms.create_key(alias="alias/bench")
    opts = {"local": {"keystore": str(ks)}}
    fast_conf, fast_reason = _fast_path_conf()
    out: dict[str, Any] = {"dataset": dataset, "rows": rows, "repeat": args.repeat, "master": args.master,
                           "partitions": args.partitions, "native": native_available(), "times": {},
                           "kms_decrypt": {}, "sizes": {}, "runs": {}}

    def decrypts() -> int:
        return sum(1 for e in kms.audit_events() if e.get("operation") == "Decrypt")

    pme_server = None
    with PeakRss() as rss:
        conf = {"spark.driver.memory": args.driver_memory, **fast_conf}
        if not args.no_spark_pme:
            conf = _spark_pme.session_conf(conf, _spark_pme.build_client_jar(workdir))
            pme_server = _spark_pme.LocalKmsHttp(str(ks))
        spark = local_session(args.master, "spark_kms-bench", conf=conf)
        out["gcm"] = getattr(_native.backend(), "GCM_BACKEND", "pure")  # the Python side's AES-GCM
        if fast_reason is None:
            out["gcm_jvm"] = str(spark.sparkContext._jvm.io.sparkkms.fastpath.FastPathPlugin.cipherImplementation())
        if fast_conf and fast_reason is None:
            from spark_kms.spark import fastpath

            fast_reason = fastpath.unavailable_reason(spark)
        out["fast_path_skipped"] = fast_reason
        # faker: a broadcast join of the pool, recomputed by every write alike (a plaintext source read
        # back instead would come in as fewer, larger partitions than --partitions)
        df, pii = frame(spark, dataset, rows, args.partitions, Path(args.workdir))
        out["pii"] = list(pii)
        paths = {k: workdir / k for k in ("plain", "aes", "spark_kms", "spark_kms_jvm", "spark_pme")}
        aes_key = secrets.token_hex(32)
        checksum = F.sum(F.xxhash64(*pii).cast("decimal(38,0)")).cast("string")
        one = pii[1]  # the selective query's decrypted column (email in both datasets)
        sel_sum = F.sum(F.xxhash64(one).cast("decimal(38,0)")).cast("string")

        def write_plain() -> None:
            df.write.mode("overwrite").parquet(str(paths["plain"]))

        def write_aes() -> None:
            cols = [F.expr(f"aes_encrypt({c}, unhex('{aes_key}'), 'GCM')").alias(c) if c in pii else F.col(c)
                    for c in df.columns]
            df.select(*cols).write.mode("overwrite").parquet(str(paths["aes"]))

        def write_kms() -> Any:
            return write_encrypted(df, str(paths["spark_kms"]), key_uri=KEY_URI, columns=list(pii), kms_options=opts)

        def read_plain() -> Any:
            return tuple(spark.read.parquet(str(paths["plain"])).agg(F.count("*"), checksum).first())

        def read_kms(fast: bool) -> Callable[[], Any]:
            return lambda: tuple(read_encrypted(spark, str(paths["spark_kms"]), kms_options=opts, fast_path=fast)
                                 .agg(F.count("*"), checksum).first())

        def write_kms_jvm() -> Any:
            return write_encrypted(df, str(paths["spark_kms_jvm"]), key_uri=KEY_URI, columns=list(pii),
                                   kms_options=opts, fast_path=True)

        def write_spark_pme() -> None:
            assert pme_server is not None
            (df.write.options(**_spark_pme.options(pme_server, list(pii))).mode("overwrite")
             .parquet(str(paths["spark_pme"])))

        def read_spark_pme() -> Any:
            assert pme_server is not None
            return tuple(spark.read.options(**_spark_pme.options(pme_server)).parquet(str(paths["spark_pme"]))
                         .agg(F.count("*"), checksum).first())

        def read_ds_scan() -> Any:
            scan = (spark.read.format("spark_kms").option("kms_options", json.dumps(opts))
                    .load(str(paths["spark_kms"])))
            return tuple(scan.agg(F.count("*"), checksum).first())

        def sel_plain() -> Any:
            q = spark.read.parquet(str(paths["plain"])).filter(F.col("amount") > SELECTIVE_AMOUNT)
            return tuple(q.agg(F.count("*"), sel_sum).first())

        def sel_kms(fast: bool) -> Callable[[], Any]:
            def q() -> Any:
                d = read_encrypted(spark, str(paths["spark_kms"]), columns=["amount", one], kms_options=opts,
                                   fast_path=fast).filter(F.col("amount") > SELECTIVE_AMOUNT)
                return tuple(d.agg(F.count("*"), sel_sum).first())
            return q

        t = out["times"]
        writes: list[tuple[str, Callable[[], Any]]] = [("write_plain", write_plain)]
        if args.aes:
            writes.append(("write_aes", write_aes))
        writes.append(("write_spark_kms", write_kms))
        if fast_reason is None:
            writes.append(("write_spark_kms_jvm", write_kms_jvm))
        if pme_server is not None:
            writes.append(("write_spark_pme", write_spark_pme))
        written = _rounds(writes, args.repeat, lambda name, _r: rss.step(name), out["runs"])
        t |= {name: secs for name, (secs, _) in written.items()}
        last_write = written["write_spark_kms"][1]
        if "write_spark_kms_jvm" in written:
            out["write_jvm_engine"] = getattr(written["write_spark_kms_jvm"][1], "engine", "python")
        out["write_kms_calls"] = last_write.kms_calls
        out["files"] = len(last_write.files)
        out["deks"] = len(last_write.deks)
        results: dict[str, Any] = {}
        reads: list[tuple[str, Callable[[], Any]]] = [
            ("read_plain", read_plain), ("read_python", read_kms(False)), ("read_ds_scan", read_ds_scan),
            ("sel_plain", sel_plain), ("sel_python", sel_kms(False)),
        ]
        if fast_reason is None:
            reads += [("read_fast", read_kms(True)), ("sel_fast", sel_kms(True))]
        if pme_server is not None:
            reads.append(("read_spark_pme", read_spark_pme))

        def around(name: str, r: int) -> Callable[[], None]:
            if name.endswith("_fast") and r == 0:
                process_dek_cache().clear()  # the fast path unwraps in this driver process: its first run is cold
            rss.step(name)
            before = decrypts()

            def count() -> None:
                out["kms_decrypt"][name] = out["kms_decrypt"].get(name, 0) + decrypts() - before
            return count

        for name, (secs, result) in _rounds(reads, args.repeat, around, out["runs"]).items():
            t[name], results[name] = secs, result
        spark.stop()
        if pme_server is not None:
            pme_server.close()
            out["spark_pme_kms_calls"] = dict(pme_server.calls)
            # encrypted footer: parquet-java ends the file with "PARE", not "PAR1" (nothing readable without keys)
            out["spark_pme_encrypted_footer"] = all(
                f.read_bytes()[-4:] == b"PARE" for f in paths["spark_pme"].rglob("*.parquet"))
        out["peak_rss"] = rss.peak
        out["peak_rss_by_kind"] = dict(rss.by_kind)
        out["peak_rss_by_step"] = dict(rss.by_step)
        out["driver_memory"] = args.driver_memory
    for name in ("read_python", "read_ds_scan", "read_fast", "read_spark_pme"):
        if name in results and results[name] != results["read_plain"]:
            raise SystemExit(f"{name}: decrypted checksum differs from plaintext")
    for name in ("sel_python", "sel_fast"):
        if name in results and results[name] != results["sel_plain"]:
            raise SystemExit(f"{name}: decrypted checksum differs from plaintext")
    out["selected_rows"] = results["sel_plain"][0]
    out["sizes"] = {k: _size(p) for k, p in paths.items() if p.exists()}
    if not args.no_pme:
        out["pme"] = _pme.run(paths["plain"], workdir, str(ks), pii, args.repeat)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def _ratio(t: dict[str, float], a: str, b: str) -> str:
    return f"{t[a] / t[b]:.2f}x" if a in t and b in t else "skipped"


def report(r: dict[str, Any]) -> list[str]:
    t = r["times"]
    lines = [f"== dataset={r['dataset']} rows={r['rows']:,} partitions={r['partitions']} repeat={r['repeat']} "
             f"master={r['master']} PII={','.join(r['pii'])} native={r['native']}",
             f"  AES-GCM: Python side {r.get('gcm', '?')}, JVM fast path {r.get('gcm_jvm', '-')}"]
    for k, v in t.items():
        runs = ", ".join(f"{x:.2f}" for x in r.get("runs", {}).get(k, []))
        lines.append(f"  {k:<16} {v:8.2f} s (median; runs {runs})")
    fast_note = "" if not r.get("fast_path_skipped") else f"  (fast path skipped: {r['fast_path_skipped']})"
    lines += [
        "  -- issue #16 targets --",
        f"  read_encrypted {len(r['pii'])} PII + checksum / plaintext, fast_path=True : {_ratio(t, 'read_fast', 'read_plain')}"
        f"   (target <= 2.0x){fast_note}",
        f"  read_encrypted {len(r['pii'])} PII + checksum / plaintext, fast_path=False: {_ratio(t, 'read_python', 'read_plain')}",
        f"  selective query ({r['selected_rows']:,} rows) 1 PII / plaintext, fast    : {_ratio(t, 'sel_fast', 'sel_plain')}"
        "   (target <= 1.5x)",
        f"  selective query 1 PII / plaintext, Python path          : {_ratio(t, 'sel_python', 'sel_plain')}",
        f"  encrypted write / plaintext write                       : {_ratio(t, 'write_spark_kms', 'write_plain')}"
        "   (target <= 1.3x)",
        f"  encrypted write, JVM path (fast_path=True) / plaintext  : {_ratio(t, 'write_spark_kms_jvm', 'write_plain')}"
        f"   (engine {r.get('write_jvm_engine')})",
        f"  format('spark_kms') scan / plaintext read               : {_ratio(t, 'read_ds_scan', 'read_plain')}",
    ]
    if "write_spark_pme" in t:
        lines += [
            f"  Spark PME write / plaintext write                       : {_ratio(t, 'write_spark_pme', 'write_plain')}",
            f"  Spark PME read / plaintext read                         : {_ratio(t, 'read_spark_pme', 'read_plain')}",
            f"  spark_kms write / Spark PME write                       : "
            f"{_ratio(t, 'write_spark_kms', 'write_spark_pme')}",
            f"  read_encrypted fast / Spark PME read                    : {_ratio(t, 'read_fast', 'read_spark_pme')}",
            f"  Spark PME KMS calls (wrap/unwrap over all runs): {r.get('spark_pme_kms_calls')}, encrypted footers: "
            f"{r.get('spark_pme_encrypted_footer')}",
        ]
    if "write_aes" in t:
        lines.append(f"  aes_encrypt write / spark_kms write                     : "
                     f"{_ratio(t, 'write_aes', 'write_spark_kms')}")
    deks = r["deks"]
    for name, calls in r["kms_decrypt"].items():
        if name.startswith(("read_", "sel_")) and not name.endswith("_plain"):
            lines.append(f"  KMS Decrypt calls, {name:<12} ({r['repeat']} runs, {deks} data keys): {calls}")
    lines.append(f"  KMS calls (last encrypted write): {r['write_kms_calls']} for {r['files']} files")
    for k, size in r["sizes"].items():
        lines.append(f"  size {k:<10} {size / 1e6:8.1f} MB")
    lines.append(f"  peak RSS of the process tree (Spark steps, spark.driver.memory={r.get('driver_memory')}): "
                 f"{r['peak_rss'] / 1e9:.2f} GB")
    kinds = r.get("peak_rss_by_kind", {})
    lines.append("    peak by process: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sorted(kinds.items())))
    steps = r.get("peak_rss_by_step", {})
    lines.append("    peak by step:    " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in steps.items()))
    if "pme" in r:
        lines += _pme.report(r["pme"], r["repeat"])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,4000000", help="row counts, comma-separated")
    parser.add_argument("--dataset", default="both", choices=("synthetic", "faker", "both"))
    parser.add_argument("--memory-check", action="store_true",
                        help="also run 1,000,000 rows when not listed, to show peak memory at 1M vs the largest")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--aes", action="store_true", help="also time Spark's aes_encrypt write (slow)")
    parser.add_argument("--no-pme", action="store_true", help="skip the pyarrow-level PME comparison")
    parser.add_argument("--no-spark-pme", action="store_true",
                        help="skip Spark's own PME (a JVM KmsClient compiled with javac, over the local KMS)")
    parser.add_argument("--keep", action="store_true", help="keep the written datasets")
    parser.add_argument("--driver-memory", default="4g",
                        help="spark.driver.memory (local mode: the JVM heap of driver and executors)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "dataset:rows:result.json": a child run
    args = parser.parse_args()
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spark_kms_bench_"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        dataset, rows, result = args.one.split(":", 2)
        Path(result).write_text(json.dumps(run_one(args, dataset, int(rows))))
        return
    row_counts = [int(x) for x in args.rows.split(",") if x.strip()]
    if args.memory_check and 1_000_000 not in row_counts:
        row_counts.insert(0, 1_000_000)
    datasets = ["synthetic", "faker"] if args.dataset == "both" else [args.dataset]
    passed = ["--repeat", str(args.repeat), "--partitions", str(args.partitions), "--master", args.master,
              "--driver-memory", args.driver_memory]
    passed += [flag for flag, on in (("--aes", args.aes), ("--no-pme", args.no_pme),
                                            ("--no-spark-pme", args.no_spark_pme), ("--keep", args.keep)) if on]
    runs: list[dict[str, Any]] = []
    for dataset in datasets:
        for rows in row_counts:
            result = args.workdir / f"result_{dataset}_{rows}.json"
            cmd = [sys.executable, __file__, *passed, "--workdir", str(args.workdir), "--one",
                   f"{dataset}:{rows}:{result}"]
            subprocess.run(cmd, check=True)
            runs.append(json.loads(result.read_text()))
            print("\n".join(report(runs[-1])), flush=True)
    print("== summary ==")
    for dataset in datasets:
        mine = [r for r in runs if r["dataset"] == dataset]
        peaks = ", ".join(f"{r['rows']:,} rows: {r['peak_rss'] / 1e9:.2f} GB" for r in mine)
        print(f"  peak RSS ({dataset}): {peaks}")
        for r in mine:
            sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in r["sizes"].items())
            print(f"  sizes ({dataset}, {r['rows']:,} rows): {sizes}")


if __name__ == "__main__":
    main()
