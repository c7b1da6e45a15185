"""A table re-encrypt SIGKILLed midway leaves the table readable and consistent; a re-run completes it.

The job runs in a subprocess whose table backend (delta-rs / pyiceberg) is wrapped by a fault hook that
SIGKILLs the process at a chosen place of a chosen batch: just *before* its commit (its new files written,
never referenced by the log) or just *after* it (committed, the journal not yet updated). Deterministic: no
timing is involved.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from spark_kms import tables
from spark_kms.kms import kms_call_counts, reset_kms_call_counts
from spark_kms.kms.local import LocalKms

COLUMNS = ["id", "name", "ssn", "email", "amount", "birth", "day"]

HOOK = r"""
import json, os, signal, sys
from spark_kms import tables
from spark_kms.tables import _delta, _iceberg

where, batch, uri, kms, kw = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
for cls in (_delta.DeltaBackend, _iceberg.IcebergBackend):
    def commit_files(self, adds, removes, *, app_txn=None, _real=cls.commit_files, **rest):
        if app_txn is not None and app_txn[1] == batch and where == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = _real(self, adds, removes, app_txn=app_txn, **rest)
        if app_txn is not None and app_txn[1] == batch and where == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    cls.commit_files = commit_files
tables.reencrypt_table(uri, kms_options=kms, batch_files=1, run_id="kill-1", **kw)
"""


@pytest.mark.parametrize("where", ["before", "after"])
def test_sigkill_during_table_reencrypt_then_rerun(target, source, local_kms, where):
    kms = local_kms.kms_options
    kw = {k: v for k, v in target.kw.items() if k != "format"}
    tables.encrypt_into_table(source, target.uri, columns=["ssn", "amount"], key_uri=local_kms.key_uri,
                              kms_options=kms, partition_by=["day"], **target.kw)
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    batch = 1 if where == "before" else 0  # killed before batch 1's commit, or right after batch 0's
    proc = subprocess.run([sys.executable, "-c", HOOK, where, str(batch), target.uri, json.dumps(kms), json.dumps(kw)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    # Killed: the table is consistent -- its own reader and spark_kms read every row, equal to the source.
    assert target.own_read().num_rows == source.num_rows
    expected = source.sort_by("id").select(COLUMNS)
    assert tables.read_table_decrypted(target.uri, kms_options=kms, **kw).sort_by("id").select(COLUMNS).equals(expected)
    committed = [job for _op, job in target.operations()].count("reencrypt")
    assert committed == 1  # exactly one batch made it into the log
    journal = json.loads((target.root / "_spark_kms_runs" / "kill-1.state.json").read_text())
    assert journal["status"] == "running"
    if where == "before":  # batch 1's files were written but never committed: invisible orphans
        assert len(target.data_files()) == 2 + 2

    done = tables.reencrypt_table(target.uri, kms_options=kms, **kw)  # no run id: resumes the pending run
    assert done.ok and done.run_id == "kill-1" and done.details.get("resumed") is True
    assert [job for _op, job in target.operations()].count("reencrypt") == 2  # batch 0 not committed twice
    assert tables.inspect_table(target.uri, kms_options=kms, **kw).up_to_date is True
    assert tables.read_table_decrypted(target.uri, kms_options=kms, **kw).sort_by("id").select(COLUMNS).equals(expected)
    assert target.own_read().num_rows == source.num_rows
    assert len(target.data_files()) == 2 + 2  # the old files (until vacuum) and the new: no orphan left
    assert json.loads((target.root / "_spark_kms_runs" / "kill-1.state.json").read_text())["status"] == "succeeded"
    reset_kms_call_counts()
    again = tables.reencrypt_table(target.uri, kms_options=kms, run_id="kill-1", **kw)
    assert again.run_id == "kill-1" and again.ok and not kms_call_counts()  # finished: its record, no KMS call
