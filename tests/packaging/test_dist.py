"""``make dist``'s build, its sdist and wheel, and the wheel installed into a fresh virtualenv.

One module-scoped build (``python -m build``, what ``make dist`` runs, into a temp dir rather than ``dist/``):

* the sdist holds every file git tracks (sources, docs/, dags/, notebooks/, every tests/ subfolder with its data
  and vectors, bench/, .ci/, jvm/ when present, the Makefile, setup.py, MANIFEST.in, LICENSE, NOTICE) and no
  build junk (compiled extensions, bytecode, caches, virtualenvs);
* the wheel's metadata: ``License-Expression: Apache-2.0 AND ISC`` (the bundled libsodium), LICENSE and NOTICE
  (with libsodium's ISC notice) as license files, also inside the jar, the native extension when this checkout
  has one, the JVM fast path's jar (``make install`` builds it; the wheel is built
  from the checkout, like ``make dist``, so it carries it);
* a fresh virtualenv (no ``--system-site-packages``: a real install) gets the wheel with its ``spark`` extra
  from pip's cache and local wheel directories (pyspark is in pip's cache after ``make install``), then runs
  the README's PySpark example with that venv's Python, from a temp dir, so the checkout is not on
  ``sys.path``; then reads an encrypted dataset through the wheel's fast-path jar (batch by batch, with its JNI
  library).

Time: about 6 minutes on a busy 2-core machine (build ~25 s, venv + install ~2 min, the README example on a
cold JVM ~1-2.5 min); marked ``slow``.
"""

from __future__ import annotations

import email.parser
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BUNDLED_SODIUM = ROOT / "build" / "libsodium" / "lib" / "libsodium.a"  # make install builds it (Makefile)

pytestmark = pytest.mark.slow

_JUNK = re.compile(r"(\.so|\.pyc|\.pyo|\.o|\.class)$|(^|/)(__pycache__|\.venv|\.hypothesis|\.pytest_cache|"
                   r"\.ruff_cache|\.ipynb_checkpoints|spark-warehouse|metastore_db|build|dist)(/|$)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    for kind in ("--sdist", "--wheel"):  # as `make dist`: the wheel from the checkout, with the fast-path jar
        done = subprocess.run([sys.executable, "-m", "build", kind, "--outdir", str(out), str(ROOT)],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sdists, wheels = sorted(out.glob("spark_kms-*.tar.gz")), sorted(out.glob("spark_kms-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return sdists[0], wheels[0]


def _tracked() -> list[str]:
    """Every file git tracks; none outside a git checkout (e.g. the tests run from an unpacked sdist)."""
    try:
        done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except OSError:
        return []
    if done.returncode != 0:
        return []
    return [line for line in done.stdout.splitlines() if (ROOT / line).is_file()]


def test_sdist_holds_everything_needed_to_build_and_test(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        prefix = sdist.name.removesuffix(".tar.gz") + "/"
        names = {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}
    required = {"LICENSE", "NOTICE", "MANIFEST.in", "Makefile", "setup.py", "pyproject.toml", "README.md",
                "spark_kms/crypto/_fastgcm.c", "spark_kms/__main__.py"}
    assert required <= names, sorted(required - names)
    for folder in ("docs", "dags", "notebooks", "bench", ".ci", "tests/vectors", "tests/data"):
        assert any(n.startswith(folder + "/") for n in names), f"the sdist has nothing under {folder}/"
    for sub in sorted(p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not _JUNK.search(p.name)):
        assert any(n.startswith(f"tests/{sub}/") for n in names), f"the sdist lacks tests/{sub}/"
    if (ROOT / "jvm").is_dir():
        assert any(n.startswith("jvm/") for n in names), "the sdist lacks jvm/"
    missing = sorted(set(_tracked()) - names)
    assert not missing, f"tracked files missing from the sdist: {missing[:20]}"
    junk = sorted(n for n in names if _JUNK.search(n))
    assert not junk, f"build junk in the sdist: {junk[:20]}"


def test_wheel_metadata_names_the_license(built: tuple[Path, Path]) -> None:
    _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        license_text = whl.read(f"{info}/licenses/LICENSE").decode()
        notice = whl.read(f"{info}/licenses/NOTICE").decode()
    assert metadata["License-Expression"] == "Apache-2.0 AND ISC"
    assert sorted(metadata.get_all("License-File")) == ["LICENSE", "NOTICE"]
    assert metadata["License"] is None  # the deprecated free-text field is gone
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and len(license_text.splitlines()) > 150  # the full text
    assert "Apache License, Version 2.0" in notice
    assert "libsodium 1.0.20" in notice and "ISC License" in notice and "Frank Denis" in notice
    assert "spark_kms/__main__.py" in names and "spark_kms/notebook.py" in names
    assert not any(n.startswith("tests/") for n in names)
    from spark_kms.crypto import native_available

    if native_available():  # this checkout has a compiler and OpenSSL headers: so does the wheel build
        assert any(re.match(r"spark_kms/crypto/_fastgcm\..*\.so$", n) for n in names), "wheel without _fastgcm"
    assert "spark_kms/jvm/spark-kms-fastpath.jar" in names, "wheel without the fast-path jar"
    with zipfile.ZipFile(wheel) as whl:
        jar_bytes = whl.read("spark_kms/jvm/spark-kms-fastpath.jar")
    with zipfile.ZipFile(io.BytesIO(jar_bytes)) as jar:
        assert jar.read("META-INF/NOTICE").decode() == notice  # the JNI library inside links libsodium in too


#: Run with the fresh venv's Python: the fast path from the wheel's jar, its plugin, SQL extension and JNI library.
_FAST_PATH = """
import json, tempfile
from spark_kms.kms.local import LocalKms
from spark_kms.spark import fastpath, read_encrypted, write_encrypted
from spark_kms.spark.session import local_session
work = tempfile.mkdtemp()
LocalKms(f"{work}/keystore").create_key(alias="alias/pii")
kms = {"local": {"keystore": f"{work}/keystore"}}
spark = local_session("local[1]", "wheel", conf=fastpath.spark_conf())
df = spark.createDataFrame([(1, "078-05-1120"), (2, None)], "id long, ssn string")
write_encrypted(df, f"{work}/customers", key_uri="local://alias/pii", columns=["ssn"], kms_options=kms)
customers = read_encrypted(spark, f"{work}/customers", kms_options=kms, fast_path=True)
plan = customers._jdf.queryExecution().executedPlan().toString()
print(json.dumps({"jar": str(fastpath.jar_path()), "rows": sorted(tuple(r) for r in customers.collect()),
                  "columnar": "SparkKmsDecryptColumnar" in plan,
                  "cipher": spark.sparkContext._jvm.io.sparkkms.fastpath.FastPathPlugin.cipherImplementation()}))
"""


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python block"
    return blocks[0]


@pytest.mark.spark
def test_the_wheel_in_a_fresh_venv_runs_the_readme_example(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, wheel = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPARK_KMS_", "PYSPARK_", "VIRTUAL_ENV")) and k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", f"{wheel}[spark]"], capture_output=True,
                             text=True, timeout=1800, env=env)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    work = tmp_path / "elsewhere"  # not the checkout: only the installed wheel can be imported
    work.mkdir()
    (work / "example.py").write_text(_readme_example())
    env |= {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python, "SPARK_LOCAL_IP": "127.0.0.1"}
    where = subprocess.run([python, "-c", "import spark_kms, sys; print(spark_kms.__file__)"], cwd=work,
                           capture_output=True, text=True, timeout=120, env=env)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv)), where.stdout
    cli = subprocess.run([python, "-m", "spark_kms", "--version"], cwd=work, capture_output=True, text=True,
                         timeout=120, env=env)
    assert cli.returncode == 0 and "0.1.0" in cli.stdout, cli.stdout + cli.stderr

    run = subprocess.run([python, "example.py"], cwd=work, capture_output=True, text=True, timeout=1200, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "078-05-1120" in run.stdout and "ada@example.org" in run.stdout  # decrypted values shown by .show()

    fast = subprocess.run([python, "-c", _FAST_PATH], cwd=work, capture_output=True, text=True, timeout=1200,
                          env=env)
    assert fast.returncode == 0, fast.stdout[-3000:] + fast.stderr[-5000:]
    report = json.loads(fast.stdout.strip().splitlines()[-1])
    assert report["jar"].startswith(str(venv)), report  # the wheel's jar, not the checkout's
    assert report["rows"] == [[1, "078-05-1120"], [2, None]] and report["columnar"] is True, report
    assert report["cipher"].startswith(("libsodium ", "openssl")), report  # its JNI library, not JCE
    if BUNDLED_SODIUM.is_file():  # make install built it: the wheel's JNI library carries it (built from the checkout)
        assert report["cipher"] == "libsodium 1.0.20 (bundled)", report
