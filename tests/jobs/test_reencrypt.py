"""Re-encrypt on the embedded KMS: new DEKs and cells, equal data, idempotence, pruning, retirement."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from spark_kms.crypto import AES_256_GCM, AES_256_SIV, DATASET_MANIFEST_NAME, parse_cell_header
from spark_kms.errors import ConfigurationError, KeyNotFoundError, KeyStateError
from spark_kms.jobs import RUN_ID_CONTEXT_KEY, reencrypt_dataset, rewrap_dataset
from spark_kms.jobs.reencrypt import journal_path
from spark_kms.kms import kms_call_counts, reset_kms_call_counts
from spark_kms.kms.local import LocalKms
from spark_kms.parquet import read_dataset_key_table, read_key_table


def _dek_ids(ds) -> set[str]:
    return set(read_dataset_key_table(ds.root).deks)


def test_reencrypt_changes_every_dek_and_cell_and_the_data_decrypts_equal(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    deks_before, cells_before = _dek_ids(dataset), dataset.cell_bytes()
    files_before = dataset.files()

    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="re-1")

    assert dataset.files() == files_before  # same names, replaced in place
    assert not _dek_ids(dataset) & deks_before
    after = dataset.cell_bytes()
    for key, cells in cells_before.items():
        non_null = [(a, b) for a, b in zip(cells, after[key]) if a is not None]
        assert non_null and all(a != b for a, b in non_null), key
        assert [c is None for c in cells] == [c is None for c in after[key]]  # nulls stay nulls
    assert dataset.decrypted().equals(dataset.expected)
    assert summary.files == 4 and summary.rows == dataset.expected.num_rows and summary.deks == 4
    assert summary.kms_calls["local:GenerateDataKey"] == 5  # 4 files + one new dataset-level SIV key
    (key_id,) = summary.key_versions
    assert summary.key_versions == {key_id: ["2"]}
    for f in dataset.files():
        table = read_key_table(f)
        assert {e.key_version for e in table.deks.values()} == {"2"}
        gcm = [e for e in table.deks.values() if e.algorithm != AES_256_SIV]
        assert {e.encryption_context[RUN_ID_CONTEXT_KEY] for e in gcm} == {"re-1"}
        assert {e.encryption_context["dataset"] for e in gcm} == {"customers"}
        # The deterministic key is the dataset's join-domain key, made once and kept by later writers.
        assert [e.encryption_context for e in table.deks.values() if e.algorithm == AES_256_SIV] == [
            {"spark_kms_join_domain": "dataset"}]
    siv = {e.dek_id for e in read_dataset_key_table(dataset.root).deks.values() if e.algorithm == AES_256_SIV}
    assert len(siv) == 1  # one deterministic key for the whole dataset: equal values stay joinable
    journal = json.loads(journal_path(dataset.root, "re-1").read_text())
    assert journal["status"] == "succeeded" and set(journal["files"].values()) == {"done"}
    assert not list(dataset.root.rglob(".*.reencrypt"))


def test_deterministic_and_blind_index_cells_share_one_new_key_across_files(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    old_siv = {e.dek_id for e in read_dataset_key_table(dataset.root).deks.values() if e.algorithm == AES_256_SIV}
    reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)
    headers = set()
    for f in dataset.files():
        for cell in pq.read_table(f, columns=["ssn"]).column("ssn").to_pylist():
            header = parse_cell_header(cell)
            assert header.algorithm == AES_256_SIV
            headers.add(header.dek_id_hex)
    assert len(headers) == 1 and not headers & old_siv  # equal values stay equal (joinable) across files
    decrypted = dataset.decrypted()
    assert decrypted.column("ssn").equals(dataset.expected.column("ssn"))


def test_reencrypt_rerun_is_idempotent(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    first = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="re-1")
    digests = dataset.file_digests()
    reset_kms_call_counts()

    same = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="re-1")
    assert kms_call_counts() == {}  # a finished run: nothing to do, no KMS call at all
    assert same.to_dict() == first.to_dict()

    fresh = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)
    assert kms_call_counts() == {"local:DescribeKey": 1}  # a new run finds every file current
    assert fresh.files == 0 and dataset.file_digests() == digests


def test_reencrypt_after_rewrap_prunes_the_manifest_and_survives_destroying_old_versions(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    rewrap_dataset(dataset.root, kms_options=dataset.kms_options)
    kms.disable_key_version("alias/pii", 1)  # the old wraps in the footers are now dead

    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)

    assert summary.files == 4  # footers were still behind: rewrap does not touch them
    assert summary.details["manifest_entries_pruned"] == 5
    assert not (dataset.root / DATASET_MANIFEST_NAME).exists()
    kms.destroy_key_version("alias/pii", 1)
    assert dataset.decrypted().equals(dataset.expected)


def test_reencrypt_to_another_key_then_the_old_key_can_be_disabled(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    new_key = kms.create_key(alias="alias/pii-2026")
    summary = reencrypt_dataset(dataset.root, key_uri="local://alias/pii-2026", kms_options=dataset.kms_options)
    assert list(summary.key_versions) == [new_key]
    kms.disable_key("alias/pii")
    assert dataset.decrypted().equals(dataset.expected)
    assert {e.key_uri for e in read_dataset_key_table(dataset.root).deks.values()} == {"local://alias/pii-2026"}


def test_force_reencrypts_current_files(dataset):
    deks_before = _dek_ids(dataset)
    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, force=True)
    assert summary.files == 4 and not _dek_ids(dataset) & deks_before
    assert dataset.decrypted().equals(dataset.expected)


def test_reencrypt_failure_leaves_every_file_readable_and_records_the_error(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    kms.disable_key_version("alias/pii", 1)  # no rewrap first: the old DEKs cannot be unwrapped
    with pytest.raises(KeyStateError) as err:
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="bad")
    assert "data key" in str(err.value)
    record = json.loads((dataset.root / "_spark_kms_runs" / "bad.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("KeyStateError")
    kms.enable_key_version("alias/pii", 1)
    assert dataset.decrypted().equals(dataset.expected)
    assert not list(dataset.root.rglob(".*.reencrypt"))


def test_gcm_only_dataset_reencrypts_only_the_files_behind(tmp_path, local_kms):
    from spark_kms.kms import provider_from_uri
    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec

    provider = provider_from_uri(local_kms.key_uri, **local_kms.kms_options["local"])
    kms = LocalKms(local_kms.keystore_dir)
    root = tmp_path / "ds"
    root.mkdir()
    import pyarrow as pa

    for i in range(3):
        if i == 2:
            kms.rotate_key("alias/pii")  # the last file is written under version 2 already
        t = pa.table({"id": [i], "email": [f"e{i}"]})
        with EncryptedParquetWriter(root / f"part-{i}.parquet", t.schema, EncryptionSpec(columns=["email"]),
                                    provider) as w:
            w.write_batch(t)
    current = read_key_table(root / "part-2.parquet").deks
    summary = reencrypt_dataset(root, kms_options=local_kms.kms_options)
    assert summary.files == 2 and summary.details["files_planned"] == 2
    assert read_key_table(root / "part-2.parquet").deks == current
    assert {e.algorithm for e in read_dataset_key_table(root).deks.values()} == {AES_256_GCM}


# -- which run a request continues (issue #14, item 4) -------------------------------------------------


class _Stop(Exception):
    """Stops a run after its first file, as a crash or a kill would (the journal is already written)."""


def _stop_after_first_file(rel: str, done: int, total: int) -> None:
    raise _Stop(rel)


def _as(ds, principal: str, **extra) -> dict:
    return {"local": {**ds.kms_options["local"], "principal": principal, **extra}}


def _journal(ds, run_id: str) -> dict:
    return json.loads(journal_path(ds.root, run_id).read_text())


def test_a_writer_cannot_hijack_the_next_routine_rotation(dataset, local_kms):
    """The attack of the issue: a writer starts a run to a key of its own and lets it fail; the next
    routine rotation used to adopt the unfinished run and finish it -- now it refuses and names it."""
    kms = LocalKms(local_kms.keystore_dir)
    kms.rotate_key("alias/pii")
    kms.create_key(alias="alias/mallory")
    with pytest.raises(_Stop):
        reencrypt_dataset(dataset.root, key_uri="local://alias/mallory", kms_options=_as(dataset, "mallory"),
                          run_id="evil", progress=_stop_after_first_file)
    evil = _journal(dataset, "evil")
    assert evil["status"] == "running" and evil["requested_by"]["principal"] == "mallory"
    assert list(evil["files"].values()).count("done") == 1
    digests = dataset.file_digests()
    routine = _as(dataset, "etl")

    # The routine rotation, in every form that does not name the run, refuses and says what to do.
    for request in ({}, {"key_uri": local_kms.key_uri}, {"run_id": "nightly-2"}, {"force": True}):
        with pytest.raises(ConfigurationError) as err:
            reencrypt_dataset(dataset.root, kms_options=routine, **request)
        message = str(err.value)
        for part in ("'evil'", "local://alias/mallory", "mallory", evil["started_at"],
                     "--abandon evil", "--run-id evil", "1 of 4 files done"):
            assert part in message, (request, part, message)
    assert dataset.file_digests() == digests  # nothing was touched
    assert _journal(dataset, "evil")["status"] == "running"
    assert not (dataset.root / "_spark_kms_runs" / "nightly-2.json").exists()

    # Abandoning keeps the journal for audit, then a new run moves every file back to the routine key.
    abandoned = reencrypt_dataset(dataset.root, kms_options=routine, abandon="evil")
    assert abandoned.status == "abandoned" and abandoned.details["files_done_before"] == 1
    evil = _journal(dataset, "evil")
    assert evil["status"] == "abandoned" and evil["abandoned_by"]["principal"] == "etl"
    record = json.loads((dataset.root / "_spark_kms_runs" / "evil.json").read_text())
    assert record["status"] == "abandoned" and record["error"].startswith("_Stop")
    summary = reencrypt_dataset(dataset.root, key_uri=local_kms.key_uri, kms_options=routine)
    assert summary.files == 4 and not summary.details.get("resumed")
    kms.disable_key("alias/mallory")
    assert dataset.decrypted().equals(dataset.expected)
    assert {e.key_uri for e in read_dataset_key_table(dataset.root).deks.values()} == {local_kms.key_uri}


def test_the_same_key_uri_in_another_keystore_is_another_target(dataset, local_kms, tmp_path):
    """``local://alias/pii`` of a keystore of the attacker's: same URI, another key. The journal's
    location options tell them apart without a KMS call."""
    own = tmp_path / "mallory-keystore"
    LocalKms(own).create_key(alias="alias/pii")
    with pytest.raises(KeyNotFoundError):  # its keystore cannot unwrap the dataset's keys: the run fails
        reencrypt_dataset(dataset.root, kms_options={"local": {"keystore": str(own)}}, run_id="evil")
    journal = _journal(dataset, "evil")
    assert journal["status"] == "running" and journal["target_options"] == {"keystore": str(own)}
    assert journal["deterministic_entry"]  # made under the attacker's key: it must never be adopted
    with pytest.raises(ConfigurationError, match=r"'evil'.*local options \{'keystore'"):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)


def test_a_matching_request_resumes_and_the_journal_records_who_asked(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    with pytest.raises(_Stop):
        reencrypt_dataset(dataset.root, kms_options=_as(dataset, "etl"), run_id="r1",
                          progress=_stop_after_first_file)
    reset_kms_call_counts()
    # Another principal, same target key and options: the pending run is resumed, not a new one.
    summary = reencrypt_dataset(dataset.root, kms_options=_as(dataset, "ops"))
    assert summary.run_id == "r1" and summary.details["resumed"] is True and summary.files == 3
    assert "local:DescribeKey" not in kms_call_counts()  # the plan came from the journal
    journal = _journal(dataset, "r1")
    assert journal["status"] == "succeeded" and journal["requested_by"]["principal"] == "etl"
    assert [r["principal"] for r in journal["resumed_by"]] == ["ops"]
    assert journal["requested_by"]["os_user"] and journal["force"] is False
    assert dataset.decrypted().equals(dataset.expected)


def test_a_run_to_another_key_is_resumed_by_its_key_or_its_run_id_only(dataset, local_kms):
    kms = LocalKms(local_kms.keystore_dir)
    kms.create_key(alias="alias/pii-2026")
    with pytest.raises(_Stop):
        reencrypt_dataset(dataset.root, key_uri="local://alias/pii-2026", kms_options=dataset.kms_options,
                          run_id="move", progress=_stop_after_first_file)
    with pytest.raises(ConfigurationError, match="names no key while the dataset's data keys are under several"):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)
    with pytest.raises(ConfigurationError, match="planned with force=False, this request has force=True"):
        reencrypt_dataset(dataset.root, key_uri="local://alias/pii-2026", kms_options=dataset.kms_options,
                          force=True)
    with pytest.raises(ConfigurationError, match="run move .* targets local://alias/pii-2026, not local://alias/pii"):
        reencrypt_dataset(dataset.root, key_uri=local_kms.key_uri, kms_options=dataset.kms_options, run_id="move")
    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="move")  # named: resumed
    assert summary.details["resumed"] is True and summary.files == 3
    assert {e.key_uri for e in read_dataset_key_table(dataset.root).deks.values()} == {"local://alias/pii-2026"}


def test_a_new_run_id_with_the_same_target_supersedes_the_pending_run(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    with pytest.raises(_Stop):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="day-1",
                          progress=_stop_after_first_file)
    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="day-2")
    assert summary.run_id == "day-2" and not summary.details.get("resumed")
    old = _journal(dataset, "day-1")
    assert old["status"] == "superseded" and old["superseded_by"] == "day-2"
    with pytest.raises(ConfigurationError, match="day-1 .* was superseded and cannot be resumed"):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="day-1")
    assert dataset.decrypted().equals(dataset.expected)


def test_abandon_refuses_what_is_not_a_pending_run(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    with pytest.raises(ConfigurationError, match="no re-encrypt run 'nope' to abandon; pending runs: none"):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, abandon="nope")
    reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="done")
    with pytest.raises(ConfigurationError, match="run done .* is succeeded, not pending"):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, abandon="done")
    with pytest.raises(ConfigurationError, match="abandon= gives up a run and starts none"):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, abandon="done", force=True)
    with pytest.raises(ConfigurationError, match="a run id is 1-128 characters"):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, abandon="../x")


def test_an_old_journal_without_options_is_resumed_only_by_its_run_id(dataset, local_kms):
    LocalKms(local_kms.keystore_dir).rotate_key("alias/pii")
    journal_path(dataset.root, "r").parent.mkdir(exist_ok=True)
    journal_path(dataset.root, "r").write_text(json.dumps({
        "job": "reencrypt", "run_id": "r", "status": "running", "target_key_uri": local_kms.key_uri,
        "deterministic_entry": None, "files": {}}))
    with pytest.raises(ConfigurationError, match="started by an older spark_kms"):
        reencrypt_dataset(dataset.root, kms_options=dataset.kms_options)
    summary = reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, run_id="r")
    assert summary.details["resumed"] is True


def test_the_cli_names_the_pending_run_and_abandons_it(dataset, local_kms):
    from click.testing import CliRunner

    from spark_kms.cli import cli
    from spark_kms.cli._errors import ExitCode

    kms = LocalKms(local_kms.keystore_dir)
    kms.create_key(alias="alias/mallory")
    with pytest.raises(_Stop):
        reencrypt_dataset(dataset.root, key_uri="local://alias/mallory", kms_options=dataset.kms_options,
                          run_id="evil", progress=_stop_after_first_file)
    ks = ["--keystore", str(local_kms.keystore_dir)]
    refused = CliRunner().invoke(cli, ["reencrypt", str(dataset.root), *ks])
    assert refused.exit_code == ExitCode.USAGE, refused.output
    assert "'evil'" in refused.output and "--abandon evil" in refused.output
    gave_up = CliRunner().invoke(cli, ["reencrypt", str(dataset.root), *ks, "--abandon", "evil", "--json"])
    assert gave_up.exit_code == 0, gave_up.output
    assert json.loads(gave_up.stdout)["status"] == "abandoned"
    assert _journal(dataset, "evil")["status"] == "abandoned"


# -- secrets are never persisted (issue #14, item 7) ---------------------------------------------------


def test_no_file_a_job_writes_holds_a_secret_option(tmp_path, build):
    """Jobs run with the root key passed as a KMS option; no run record, journal, manifest or other
    file under the dataset may hold it, in any encoding."""
    import base64
    import secrets as _secrets

    root_key = _secrets.token_bytes(32)
    root_b64 = base64.b64encode(root_key).decode()
    keystore = tmp_path / "keystore"
    kms = LocalKms(keystore, root_key=root_key)
    kms.create_key(alias="alias/pii")
    kms.create_key(alias="alias/other")
    opts = {"local": {"keystore": str(keystore), "root_key": root_b64}}
    ds = build(tmp_path / "customers", "local://alias/pii", opts)
    kms.rotate_key("alias/pii")

    rewrap_dataset(ds.root, kms_options=opts, run_id="rw")
    with pytest.raises(_Stop):
        reencrypt_dataset(ds.root, key_uri="local://alias/other", kms_options=opts, run_id="stopped",
                          progress=_stop_after_first_file)
    reencrypt_dataset(ds.root, kms_options=opts, abandon="stopped")
    reencrypt_dataset(ds.root, key_uri="local://alias/pii", kms_options=opts, run_id="re")
    assert ds.decrypted().equals(ds.expected)

    written = [p for p in ds.root.rglob("*") if p.is_file()]
    assert any(p.name == "re.state.json" for p in written) and any(p.name == "rw.json" for p in written)
    for p in written:
        data = p.read_bytes()
        for form in (root_key, root_b64.encode(), root_key.hex().encode(), b"root_key"):
            assert form not in data, f"{p} holds the root key ({form[:8]!r}...)"
    assert _journal(ds, "re")["target_options"] == {"keystore": str(keystore)}


def test_reencrypt_keeps_the_join_domain_key_unless_asked_to_rotate_it(dataset, local_kms):
    from spark_kms.parquet.join_domains import read_join_keys

    reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, force=True, run_id="re-a")
    domain = read_join_keys(dataset.root)["dataset"]
    siv = lambda: {e.dek_id for e in read_dataset_key_table(dataset.root).deks.values()  # noqa: E731
                   if e.algorithm == AES_256_SIV}
    assert siv() == {domain.dek_id}
    reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, force=True, run_id="re-b")
    assert siv() == {domain.dek_id}  # kept: joins with other writes of the domain still match
    reencrypt_dataset(dataset.root, kms_options=dataset.kms_options, force=True, run_id="re-c",
                      rotate_join_domain=True)
    rotated = read_join_keys(dataset.root)["dataset"]
    assert rotated.dek_id != domain.dek_id and siv() == {rotated.dek_id}
    assert dataset.decrypted().equals(dataset.expected)
