"""``spark-kms doctor``: through click's CliRunner, and as real ``python -m spark_kms doctor`` subprocesses.

Real parts only: a real keystore (the ``local_kms`` fixture), the installed extras, the built (or not)
native extension, the machine's Java. A missing extra and a missing native extension are made real in a
subprocess by hiding the module from the import system (``sys.modules[name] = None``, what Python does for
a module that failed to import), so the checks run their own import logic on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from spark_kms.cli import cli
from spark_kms.cli._errors import ExitCode
from spark_kms.cli.doctor import EXTRAS
from spark_kms.crypto import native_available


def _env() -> dict[str, str]:
    # the calling shell's keystore / principal / root key must not leak into the checks
    return {k: v for k, v in os.environ.items() if not k.startswith("SPARK_KMS_")}


def _doctor(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["doctor", *args], env=env, catch_exceptions=False)


def _lines(output: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in output.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in ("OK", "WARN", "FAIL", "SKIP"):
            rest = parts[1]
            if rest.startswith("kms "):
                uri, _, detail = rest[4:].partition(" ")
                out[f"kms {uri}"] = (parts[0], detail.strip())
            elif rest.startswith("extra "):
                name, _, detail = rest[6:].partition(" ")
                out[f"extra {name}"] = (parts[0], detail.strip())
            else:
                item, _, detail = rest.partition("  ")
                out[item.strip()] = (parts[0], detail.strip())
    return out


def test_a_healthy_installation_exits_0_with_one_line_per_item(local_kms, monkeypatch) -> None:
    for k in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(k)
    result = _doctor("--keystore", str(local_kms.keystore_dir), "--key-uri", local_kms.key_uri)
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    expected = {"python", "spark_kms", "native crypto", "java", "spark", "keystore", f"kms {local_kms.key_uri}"}
    expected |= {f"extra {name}" for name in EXTRAS}
    assert expected <= set(lines), result.stdout
    assert lines["keystore"][0] == "OK" and "1 key(s), 1 enabled" in lines["keystore"][1]
    status, detail = lines[f"kms {local_kms.key_uri}"]
    assert status == "OK" and "state Enabled" in detail and "primary version 1" in detail
    assert lines["java"][0] == "OK" and int(lines["java"][1].split(".")[0]) >= 17  # make install needs Java 17+
    assert "FAIL" not in result.stdout and "ready: no item failed" in result.stdout


def test_json_output(local_kms, monkeypatch) -> None:
    for k in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(k)
    result = _doctor("--json", "--keystore", str(local_kms.keystore_dir))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    items = {c["item"]: c for c in report["checks"]}
    assert items["keystore"]["status"] == "OK"
    assert {c["status"] for c in report["checks"]} <= {"OK", "WARN", "SKIP"}


def test_no_keystore_given_is_skipped_not_failed(monkeypatch) -> None:
    for k in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(k)
    result = _doctor("--json")
    items = {c["item"]: c for c in json.loads(result.stdout)["checks"]}
    assert items["keystore"]["status"] == "SKIP"
    assert result.exit_code == 0


def test_a_key_that_does_not_exist_fails_with_its_exit_code(local_kms, monkeypatch) -> None:
    for k in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(k)
    result = _doctor("--keystore", str(local_kms.keystore_dir), "--key-uri", "local://alias/missing")
    assert result.exit_code == ExitCode.KEY_NOT_FOUND, result.output
    status, detail = _lines(result.stdout)["kms local://alias/missing"]
    assert status == "FAIL" and "KeyNotFoundError" in detail and "alias/missing" in detail
    assert "1 item(s) FAIL" in result.stdout


def test_a_disabled_key_fails(local_kms, monkeypatch) -> None:
    from spark_kms.kms.local import LocalKms

    for k in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(k)
    LocalKms(local_kms.keystore_dir).disable_key("alias/pii")
    result = _doctor("--keystore", str(local_kms.keystore_dir), "--key-uri", local_kms.key_uri)
    assert result.exit_code == ExitCode.KEY_STATE, result.output
    assert _lines(result.stdout)[f"kms {local_kms.key_uri}"][0] == "FAIL"


def test_a_keystore_that_does_not_open_fails(local_kms, monkeypatch, tmp_path: Path) -> None:
    # The keystore is sealed under its root.key; a different root key cannot open it.
    for k in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(k)
    (local_kms.keystore_dir / "root.key").write_bytes(os.urandom(32))
    result = _doctor("--keystore", str(local_kms.keystore_dir))
    assert result.exit_code == ExitCode.KEYSTORE, result.output
    status, detail = _lines(result.stdout)["keystore"]
    assert status == "FAIL" and "does not open" in detail and "KeystoreError" in detail
    missing = _doctor("--keystore", str(tmp_path / "nowhere"))
    assert missing.exit_code != 0
    assert _lines(missing.stdout)["keystore"][0] == "FAIL" and "no such directory" in missing.stdout
    assert not (tmp_path / "nowhere").exists()  # the doctor does not create a keystore


def test_the_keystore_comes_from_the_environment_too(local_kms, monkeypatch) -> None:
    for k in [k for k in os.environ if k.startswith("SPARK_KMS_")]:
        monkeypatch.delenv(k)
    result = _doctor("--json", env={"SPARK_KMS_KEYSTORE": str(local_kms.keystore_dir)})
    items = {c["item"]: c for c in json.loads(result.stdout)["checks"]}
    assert items["keystore"]["status"] == "OK" and str(local_kms.keystore_dir) in items["keystore"]["detail"]


# --------------------------------------------------------------------------- real subprocesses

_HIDE_AND_RUN = """
import sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None  # what Python keeps for a module that failed to import
sys.argv = ["spark-kms", *sys.argv[2:]]
from spark_kms.cli import main
main()
"""


def _subprocess(*args: str, hide: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _HIDE_AND_RUN, hide, *args], capture_output=True, text=True,
                          timeout=300, env=_env(), cwd=cwd)


def test_python_dash_m_spark_kms_doctor(local_kms, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "spark_kms", "doctor", "--keystore", str(local_kms.keystore_dir),
                         "--key-uri", local_kms.key_uri], capture_output=True, text=True, timeout=300, env=_env(),
                        cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert _lines(ok.stdout)["keystore"][0] == "OK"
    broken = subprocess.run([sys.executable, "-m", "spark_kms", "doctor", "--keystore", str(local_kms.keystore_dir),
                             "--key-uri", "local://alias/nope"], capture_output=True, text=True, timeout=300,
                            env=_env(), cwd=tmp_path)
    assert broken.returncode == ExitCode.KEY_NOT_FOUND, broken.stdout + broken.stderr
    assert _lines(broken.stdout)["kms local://alias/nope"][0] == "FAIL"


def test_a_missing_extra_is_a_warning_not_a_failure() -> None:
    done = _subprocess("doctor", "--json", hide="hvac,deltalake")
    assert done.returncode == 0, done.stdout + done.stderr
    items = {c["item"]: c for c in json.loads(done.stdout)["checks"]}
    for extra in ("vault", "delta"):
        assert items[f"extra {extra}"]["status"] == "WARN"
        assert f"pip install 'spark-kms[{extra}]'" in items[f"extra {extra}"]["detail"]
    assert items["extra aws"]["status"] == "OK"


@pytest.mark.skipif(not native_available(),
                    reason="this checkout was installed without the native extension")
def test_a_build_without_the_native_extension_warns_at_import_and_in_doctor() -> None:
    done = _subprocess("doctor", "--json", hide="spark_kms.crypto._fastgcm")
    assert done.returncode == 0, done.stdout + done.stderr
    native = {c["item"]: c for c in json.loads(done.stdout)["checks"]}["native crypto"]
    assert native["status"] == "WARN" and "libssl-dev" in native["detail"] and "reinstall" in native["detail"]
    assert done.stderr == ""  # the library logs nothing unless logging is configured

    logged = subprocess.run(
        [sys.executable, "-c", "import logging, sys; logging.basicConfig(level=logging.INFO); "
                               "sys.modules['spark_kms.crypto._fastgcm'] = None; import spark_kms.crypto"],
        capture_output=True, text=True, timeout=120, env=_env())
    lines = [line for line in logged.stderr.splitlines() if "spark_kms.crypto" in line]
    assert len(lines) == 1 and lines[0].startswith("WARNING:spark_kms.crypto._native:native AES-GCM loop missing")
    assert "libssl-dev" in lines[0]

    available = subprocess.run(
        [sys.executable, "-c", "import logging; logging.basicConfig(level=logging.INFO); import spark_kms.crypto"],
        capture_output=True, text=True, timeout=120, env=_env())
    from spark_kms.crypto import _fastgcm

    expected = (f"INFO:spark_kms.crypto._native:native AES-GCM loop available ({Path(_fastgcm.__file__).name}, "
                f"{_fastgcm.GCM_BACKEND})")
    assert available.stderr.strip().startswith(expected)


@pytest.mark.spark
@pytest.mark.slow
def test_doctor_spark_starts_a_session_in_its_own_process(tmp_path: Path) -> None:
    """Starts a JVM (tens of seconds on a busy 2-core machine): a subprocess, so the suite's session is untouched."""
    done = subprocess.run([sys.executable, "-m", "spark_kms", "doctor", "--spark", "--json"], capture_output=True,
                          text=True, timeout=600, env=_env() | {"SPARK_LOCAL_IP": "127.0.0.1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    spark = {c["item"]: c for c in json.loads(done.stdout)["checks"]}["spark"]
    assert spark["status"] == "OK" and "started and ran a job" in spark["detail"]
