"""The PKCS#11 provider (``pkcs11://``) beyond the contract suite, against SoftHSM2: URI and option
parsing, the master key's attributes, fork safety, reconnection, and the PIN kept out of logs,
reprs, pickles and error messages."""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import pytest

from spark_kms.errors import AccessDeniedError, ConfigurationError, InvalidCiphertextError, KeyNotFoundError
from spark_kms.kms import KmsConfig, provider_from_uri
from spark_kms.kms.base import WrappedKey
from spark_kms.kms.config import secret_option_names
from spark_kms.kms.pkcs11 import Pkcs11Provider, _find_versions, _load_library, open_token_session
from spark_kms.testing.pkcs11 import Pkcs11Harness

pytestmark = pytest.mark.providers

CTX = {"dataset": "customers", "run_id": "run-7"}
MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.fixture
def hsm(pkcs11_harness: Pkcs11Harness) -> Pkcs11Harness:
    return pkcs11_harness


def _plain_options(hsm: Pkcs11Harness, **extra: Any) -> dict[str, Any]:
    return {"module": hsm.module, **extra}


# -- parsing ------------------------------------------------------------------------------------
def test_uri_attributes_and_options() -> None:
    kms = provider_from_uri("pkcs11://token=spark%20kms;serial=abc123;object=pii", module=MODULE, pin="1")
    assert isinstance(kms, Pkcs11Provider)
    assert (kms.token_label, kms.token_serial, kms.label, kms.module) == ("spark kms", "abc123", "pii", MODULE)
    assert kms.key_id == "pkcs11:token=spark kms;serial=abc123;object=pii"
    via_query = Pkcs11Provider(f"pkcs11://token=t;object=k?module-path={MODULE}")
    assert via_query.module == MODULE
    assert secret_option_names("pkcs11") == frozenset({"pin"})


@pytest.mark.parametrize("uri", ["pkcs11://object=pii", "pkcs11://token=t", "pkcs11://token=t;object=k;x=1",
                                 "pkcs11://token=t;object", "pkcs11://token=t;object=k?slot=1"])
def test_malformed_uris_are_configuration_errors(uri: str) -> None:
    with pytest.raises(ConfigurationError):
        Pkcs11Provider(uri, module=MODULE)


def test_a_pin_in_the_uri_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        Pkcs11Provider(f"pkcs11://token=t;object=k?module-path={MODULE}&pin-value=S3cr3t-PIN")
    assert "S3cr3t-PIN" not in str(info.value)


@pytest.mark.parametrize("options", [{}, {"module": MODULE, "pin": "1", "pin_env": "X"},
                                     {"module": MODULE, "pin_value": "1"}])
def test_bad_options_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Pkcs11Provider("pkcs11://token=t;object=k", **options)


# -- the key --------------------------------------------------------------------------------------
def test_master_key_is_sensitive_and_non_extractable(hsm: Pkcs11Harness) -> None:
    import pkcs11.exceptions
    from pkcs11 import Attribute

    kms = hsm.provider()
    kms.generate_data_key(CTX)
    session = kms._client.session
    versions = _find_versions(session, hsm.object_label)
    assert versions
    for key in versions.values():
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        assert key[Attribute.NEVER_EXTRACTABLE] and key[Attribute.ALWAYS_SENSITIVE]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]
    desc = kms.describe_key()
    assert desc.protection_level == "hsm"
    assert "SoftHSM" in desc.protection_detail
    assert desc.extra["sensitive"] is True and desc.extra["extractable"] is False
    assert desc.extra["token"] == hsm.token_label and desc.extra["label"] == hsm.object_label
    assert desc.primary_version == str(max(versions))
    assert set(desc.versions) == {str(v) for v in versions}


def test_unknown_token_is_key_not_found(hsm: Pkcs11Harness) -> None:
    kms = Pkcs11Provider(f"pkcs11://token=no-such-token;object={hsm.object_label}",
                         **_plain_options(hsm, pin_file=str(hsm.pin_file)))
    with pytest.raises(KeyNotFoundError):
        kms.generate_data_key(CTX)


def test_version_field_of_the_wrapped_key_is_authenticated(hsm: Pkcs11Harness) -> None:
    kms = hsm.provider()
    wrapped = kms.generate_data_key(CTX).wrapped
    with pytest.raises(InvalidCiphertextError):  # key table and wrapped key disagree
        kms.decrypt_data_key(WrappedKey(wrapped.ciphertext, wrapped.key_id, "999"), CTX)
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt_data_key(WrappedKey(b"not a wrapped key", wrapped.key_id, wrapped.key_version), CTX)


# -- login ------------------------------------------------------------------------------------------
def test_no_pin_is_not_logged_in(hsm: Pkcs11Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPARK_KMS_TEST_NO_SUCH_PIN", raising=False)
    for options in ({}, {"pin_env": "SPARK_KMS_TEST_NO_SUCH_PIN"}):
        kms = Pkcs11Provider(hsm.key_uri, **_plain_options(hsm, **options))
        with pytest.raises(AccessDeniedError, match="not logged in"):
            kms.generate_data_key(CTX)


def test_pin_from_the_environment(hsm: Pkcs11Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARK_KMS_TEST_PIN", hsm.user_pin)
    kms = Pkcs11Provider(hsm.key_uri, **_plain_options(hsm, pin_env="SPARK_KMS_TEST_PIN"))
    with kms.generate_data_key(CTX) as dek:
        assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext


def test_wrong_pin_is_refused_by_the_token_when_nobody_is_logged_in(hsm: Pkcs11Harness) -> None:
    """With every session of the process closed the token itself checks the PIN (CKR_PIN_INCORRECT)."""
    import pkcs11.exceptions

    lib = _load_library(hsm.module)
    token = lib.get_token(token_label=hsm.token_label)
    with pytest.raises(pkcs11.exceptions.UserAlreadyLoggedIn):
        token.open(user_pin=hsm.user_pin)  # the harness is logged in: PKCS#11 logins are per process
    lib.reinitialize()  # closes every session of this process: logged out
    with pytest.raises(AccessDeniedError, match="PinIncorrect"):
        open_token_session(hsm.module, token, "0000-wrong")
    with pytest.raises(AccessDeniedError):
        hsm.provider_denied().generate_data_key(CTX)
    kms = hsm.provider()  # and the right PIN still logs in; the harness's admin session reopens on rotate
    assert kms.generate_data_key(CTX).wrapped.key_version


# -- sessions ---------------------------------------------------------------------------------------
# python-pkcs11's object-search iterator reports, from __del__, that the session it started on is gone.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_reconnects_after_the_session_is_closed_under_it(hsm: Pkcs11Harness) -> None:
    kms = hsm.provider()
    dek = kms.generate_data_key(CTX)
    first = kms._client
    first.session.close()  # also logs the process out of the token
    assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
    assert kms._client is not first
    assert kms.generate_data_key(CTX).wrapped.key_version


def test_fork_child_opens_its_own_session(hsm: Pkcs11Harness) -> None:
    kms = hsm.provider()
    dek = kms.generate_data_key(CTX)
    parent_conn = kms._client
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        status = 1
        try:
            ok = kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext
            fresh = kms.generate_data_key(CTX)
            ok = ok and kms.decrypt_data_key(fresh.wrapped, CTX) == fresh.plaintext
            ok = ok and kms._client is not parent_conn and kms._client.pid == os.getpid()
            os.write(write_fd, (fresh.wrapped.ciphertext.hex() if ok else "bad").encode())
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_fd, f"error {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        out = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and not out.startswith(("bad", "error")), out
    # The parent's session was not touched by the child, and the child's wraps unwrap here.
    assert kms._client is parent_conn
    child_wrapped = WrappedKey(bytes.fromhex(out), dek.wrapped.key_id, dek.wrapped.key_version)
    assert len(kms.decrypt_data_key(child_wrapped, CTX)) == 32
    assert kms.decrypt_data_key(dek.wrapped, CTX) == dek.plaintext


# -- the PIN stays secret -------------------------------------------------------------------------------
def test_pin_never_in_logs_reprs_pickles_or_errors(hsm: Pkcs11Harness, caplog: pytest.LogCaptureFixture) -> None:
    pin = hsm.user_pin
    wrong = "0000-wrong"
    caplog.set_level(logging.DEBUG)
    by_value = Pkcs11Provider(hsm.key_uri, **_plain_options(hsm, pin=pin))
    by_file = hsm.provider()
    denied = hsm.provider_denied()
    texts: list[str] = []
    dek = by_value.generate_data_key(CTX)
    by_value.describe_key()
    for kms in (by_value, denied):
        for call in (lambda k=kms: k.generate_data_key(CTX), lambda k=kms: k.decrypt_data_key(dek.wrapped, {}),
                     lambda k=kms: k.describe_key()):
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - their messages are what is checked
                texts.append(f"{exc!r} {exc}")
    config = KmsConfig({"pkcs11": _plain_options(hsm, pin=pin)})
    config.provider(hsm.key_uri).generate_data_key(CTX)
    texts += [repr(by_value), repr(by_file), repr(denied), repr(config), repr(config.public_options()),
              str(by_value.public_options()), repr(dek), caplog.text]
    for text in texts:
        assert pin not in text and wrong not in text
    # pin_file / pin_env: the PIN is in no pickle (each process reads it when it logs in)
    assert pin.encode() not in pickle.dumps(by_file)
    assert pin.encode() not in pickle.dumps(KmsConfig.for_provider(by_file))
    assert "pin" not in config.public_options()["pkcs11"]
    assert pin in config.secret_values()  # so log maskers (Airflow's) know it
    assert pin.encode() not in pickle.dumps(by_value.describe_key())
    assert not any(pin in str(v) for v in vars(by_file).values())  # not kept after login


def test_the_pin_given_as_an_option_stays_out_of_run_records_and_logs(hsm: Pkcs11Harness, tmp_path: Any,
                                                                      caplog: Any) -> None:
    """A job whose kms_options carry the PIN itself: the dataset's files, the manifest and the run records the
    jobs write hold no trace of it (nor does any log record)."""
    import pyarrow as pa

    from spark_kms.jobs import inspect_dataset, rewrap_dataset
    from spark_kms.parquet import EncryptedParquetWriter, EncryptionSpec, read_decrypted_table

    caplog.set_level(logging.DEBUG)
    kms = {"pkcs11": {"module": hsm.module, "pin": hsm.user_pin}}
    table = pa.table({"id": [1, 2, 3], "ssn": ["078-05-1120", "078-05-1121", None]})
    root = tmp_path / "people"
    with EncryptedParquetWriter(root / "part-0.parquet", table.schema, EncryptionSpec(columns=["ssn"]),
                                hsm.key_uri, kms_options=kms) as w:
        w.write_batch(table)
    inspection = inspect_dataset(str(root), kms_options=kms)
    assert {k.protection_level for k in inspection.keys} == {"hsm"}
    summary = rewrap_dataset(str(root), kms_options=kms)
    assert summary.status == "succeeded"
    assert read_decrypted_table(str(root), kms_options=kms).column("ssn").to_pylist() == table.column("ssn").to_pylist()
    written = [p for p in root.rglob("*") if p.is_file()]
    assert any("_spark_kms_runs" in p.parts for p in written)
    for p in written:
        assert hsm.user_pin.encode() not in p.read_bytes(), p
    assert hsm.user_pin not in caplog.text
    assert hsm.user_pin not in repr(summary.to_dict()) and hsm.user_pin not in repr(inspection)
