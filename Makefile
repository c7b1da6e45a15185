# The two commands of the README: `make demo` (the main job) and `make test`.
# Each does its own set-up: a virtualenv in .venv with every extra installed from PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: install demo test lint format bench clean java sanitize hsm dist jar postgres sodium

# The bundled libsodium (spark_kms/crypto/_gcm_backend.h): libsodium 1.0.20, whose AES-GCM costs 0.6-0.75x
# 1.0.18's (Debian 12's) per small cell, built from source as a static, position-independent archive and linked
# into the Python extension and the JNI library with its symbols hidden. The source is the copy PyNaCl's sdist
# carries (src/libsodium), fetched by pip from the package index and checked against this pinned hash. When it
# cannot be built (no compiler), the native loops load the system's libsodium, else OpenSSL: the same bytes.
SODIUM_PIN     := pynacl==1.6.2 --hash=sha256:018494d6d696ae03c7e656e5e74cdfd8ea1326962cc401bcf018f1ed8436811c
SODIUM_DIR     := build/libsodium
SODIUM_A       := $(SODIUM_DIR)/lib/libsodium.a
# a new pin, a new stamp: built again
SODIUM_STAMP   := $(SODIUM_DIR)/.attempted-$(word 1,$(SODIUM_PIN))
SODIUM_CFLAGS   = $$(test -f $(SODIUM_A) && echo -DSKG_SODIUM_BUNDLED)
SODIUM_LIBS     = $$(test -f $(SODIUM_A) && echo $(SODIUM_A) -Wl,--exclude-libs,ALL)

$(STAMP): pyproject.toml setup.py spark_kms/crypto/_fastgcm.c spark_kms/crypto/_gcm_backend.h $(SODIUM_STAMP)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77' wheel  # >=77: pyproject's SPDX license
	$(BIN)/python -m pip install -q -e '.[all,test]'
	@touch $(STAMP)

install: java hsm postgres sodium $(STAMP) jar

# `make jar`: the JVM fast path (issue 16; docs/ARCHITECTURE.md "JVM fast path"): the Scala and Java sources of
# jvm/ compiled against the jars inside the installed pyspark (Scala with the scala-compiler jar pyspark ships:
# no build tool, no repository), plus the JNI library over OpenSSL (jvm/src/main/c/*.c) inside the jar. Without
# gcc / libssl-dev the jar is built without it and uses JCE.
FASTPATH_JAR   := spark_kms/jvm/spark-kms-fastpath.jar
FASTPATH_JAVA  := $(shell find jvm/src/main/java -name '*.java' 2>/dev/null)
FASTPATH_SCALA := $(shell find jvm/src/main/scala -name '*.scala' 2>/dev/null)
FASTPATH_C     := $(wildcard jvm/src/main/c/*.c)
GCM_BACKEND_H  := spark_kms/crypto/_gcm_backend.h
FASTPATH_OUT   := build/jvm/classes
JDK_HOME        = $(shell dirname "$$(dirname "$$(readlink -f "$$(command -v javac)")")")
SPARK_JARS      = $$($(BIN)/python -c 'import pyspark,os;print(os.path.dirname(pyspark.__file__))')/jars

jar: $(FASTPATH_JAR)

$(FASTPATH_JAR): $(FASTPATH_JAVA) $(FASTPATH_SCALA) $(FASTPATH_C) $(GCM_BACKEND_H) $(SODIUM_STAMP) | $(STAMP)
	@command -v javac >/dev/null 2>&1 || { echo "the fast path needs a JDK 17 (javac): apt-get install openjdk-17-jdk-headless"; exit 1; }
	rm -rf $(FASTPATH_OUT) && mkdir -p $(FASTPATH_OUT)/io/sparkkms/fastpath/native spark_kms/jvm
	@jars="$(SPARK_JARS)"; cp="$$(ls "$$jars"/*.jar | tr '\n' ':')"; \
	if [ -n "$(FASTPATH_SCALA)" ]; then \
	  echo "scalac $(FASTPATH_SCALA)"; \
	  java -Xss8m -cp "$$(ls "$$jars"/scala-compiler-*.jar "$$jars"/scala-library-*.jar "$$jars"/scala-reflect-*.jar | tr '\n' ':')" \
	    scala.tools.nsc.Main -release 17 -deprecation -feature -cp "$$cp" -d $(FASTPATH_OUT) $(FASTPATH_SCALA) $(FASTPATH_JAVA) \
	    || exit 1; \
	fi; \
	echo "javac $(FASTPATH_JAVA)"; \
	javac --release 17 -Xlint:all,-serial,-path -cp "$(FASTPATH_OUT):$$cp" -d $(FASTPATH_OUT) $(FASTPATH_JAVA)
	gcc -O2 -shared -fPIC -pthread -Wall -Wextra -I"$(JDK_HOME)/include" -I"$(JDK_HOME)/include/linux" \
	  -I$(dir $(GCM_BACKEND_H)) $(SODIUM_CFLAGS) $(FASTPATH_C) $(SODIUM_LIBS) -lcrypto -ldl \
	  -o $(FASTPATH_OUT)/io/sparkkms/fastpath/native/libsparkkms_gcm.so \
	  || echo "warning: the fast path's native library did not build (gcc, libssl-dev?): it will use JCE"
	mkdir -p $(FASTPATH_OUT)/META-INF && cp LICENSE NOTICE $(FASTPATH_OUT)/META-INF/  # libsodium's ISC notice
	jar cf $@ -C $(FASTPATH_OUT) .

# PostgreSQL: the Airflow deployment test (tests/airflow/test_deployment.py) starts a throw-away server with
# spark_kms.testing.postgres; Debian installs the binaries under /usr/lib/postgresql/<version>/bin, off PATH.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

# libsodium: the bundled one above, and the system's (Debian: libsodium23, 1.0.18), which the native AES-GCM loops
# load with dlopen when the bundled one is missing or SPARK_KMS_GCM_BACKEND=system (tests/crypto checks all three).
sodium: $(SODIUM_STAMP)
	@ldconfig -p | grep -q 'libsodium\.so\.2[36] ' || (apt-get update && apt-get install -y libsodium23)

$(SODIUM_STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -rf $(SODIUM_DIR) build/libsodium-src && mkdir -p $(SODIUM_DIR) build/libsodium-src
	echo '$(SODIUM_PIN)' > build/libsodium-src/pin.txt
	( $(BIN)/python -m pip download -q --no-deps --no-binary :all: --require-hashes \
	    -r build/libsodium-src/pin.txt -d build/libsodium-src \
	  && tar xzf build/libsodium-src/pynacl-*.tar.gz -C build/libsodium-src \
	  && cd build/libsodium-src/pynacl-*/src/libsodium \
	  && ./configure -q --prefix=$(abspath $(SODIUM_DIR)) --disable-shared --enable-static --with-pic \
	       --disable-dependency-tracking > /dev/null \
	  && $(MAKE) -s -j2 > /dev/null 2>&1 && $(MAKE) -s install > /dev/null ) \
	  || echo "warning: the bundled libsodium did not build: the native loops use the system's, else OpenSSL" \
	          "(rm -r $(SODIUM_DIR) and make install to try again)"
	rm -rf build/libsodium-src
	@touch $@

# SoftHSM2: the PKCS#11 token the pkcs11:// provider's tests run against (tests/providers, tests/spark).
hsm:
	@command -v softhsm2-util >/dev/null || (apt-get update && apt-get install -y softhsm2)

java:
	@command -v java >/dev/null 2>&1 || { echo "Spark needs Java 17: install a JDK 17 (e.g. apt-get install openjdk-17-jre-headless)"; exit 1; }

demo: install
	$(BIN)/spark-kms demo

# tests/connect runs in a second process: once a process opens a Spark Connect session, pyspark treats it as a
# Connect client for good, and the rest of the suite uses a classic session (tests/connect/conftest.py keeps a
# run over more than that directory from collecting it). It starts its own Connect server in a private mount
# namespace (unshare -m, as root, like CI).
#
# Two lanes at once, to keep CI short: the tests that mostly wait on other processes (the wheel installed into
# a fresh venv, the Airflow deployment on PostgreSQL, the standalone Spark clusters, the Spark Connect servers)
# run in a second pytest process beside the rest. Lane 2's output is printed when both are done; either failing fails `make test`.
# `make test LANES=1` runs everything in one lane, one after the other.
LANE2_TESTS := tests/packaging tests/airflow/test_deployment.py tests/spark/test_cluster.py \
               tests/spark/test_pkcs11_cluster.py tests/spark/test_fastpath_secrets.py tests/airflow/test_connect.py \
               tests/cli/test_master_conf.py tests/spark/test_fastpath_write.py
LANES ?= 2
test: install
ifeq ($(LANES),1)
	$(BIN)/python -m pytest --durations=25
	$(BIN)/python -m pytest tests/connect
else
	@rm -f .lane2.log .lane2.rc
	@( { $(BIN)/python -m pytest -p no:cacheprovider $(LANE2_TESTS); a=$$?; \
	     $(BIN)/python -m pytest -p no:cacheprovider tests/connect; b=$$?; \
	     [ $$a -eq 0 ] && [ $$b -eq 0 ]; } > .lane2.log 2>&1; echo $$? > .lane2.rc ) &
	@$(BIN)/python -m pytest --durations=25 $(addprefix --ignore=,$(LANE2_TESTS)); rc=$$?; \
	  while [ ! -f .lane2.rc ]; do sleep 2; done; \
	  echo "================ lane 2: $(LANE2_TESTS) tests/connect ================"; cat .lane2.log; \
	  rc2=$$(cat .lane2.rc); rm -f .lane2.log .lane2.rc; \
	  echo "lane 1 exit $$rc, lane 2 exit $$rc2"; [ $$rc -eq 0 ] && [ $$rc2 -eq 0 ]
endif

# `make sanitize`: spark_kms/crypto/_fastgcm.c built with ASan + UBSan into build/sanitize/ (the extension that
# `pip install -e .` put in the source tree stays as it is), then the crypto tests and a 350,000-case fuzz run
# against that build. tests/sanitize/sitecustomize.py swaps it in, in the test process and its subprocesses.
# CPython is not instrumented: libasan is preloaded, leak checks are off (CPython keeps objects alive at exit
# by design) and PYTHONMALLOC=malloc gives every Python object its own ASan-guarded allocation.
SAN_DIR    := build/sanitize
SAN_EXT    := $(SAN_DIR)/_fastgcm.so
SAN_CFLAGS := -O1 -g -std=c11 -Wall -Wextra -Wno-missing-field-initializers \
              -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
FUZZ_CASES ?= 350000
# --capture=sys: a sanitizer report is written to file descriptor 2 just before the process aborts; pytest's
# default fd capture would swallow it.
SAN_PYTEST := -q -p no:cacheprovider --capture=sys
PY_INCLUDE  = $(shell $(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SAN_ENV     = LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
              UBSAN_OPTIONS=print_stacktrace=1 PYTHONMALLOC=malloc PYTHONPATH=tests/sanitize \
              SPARK_KMS_FASTGCM_SO=$(abspath $(SAN_EXT))

$(SAN_EXT): spark_kms/crypto/_fastgcm.c spark_kms/crypto/_gcm_backend.h $(STAMP) $(SODIUM_STAMP)
	@command -v gcc >/dev/null 2>&1 && test -f "$$(gcc -print-file-name=libasan.so)" \
	  && test -f /usr/include/openssl/evp.h && test -f "$(PY_INCLUDE)/Python.h" \
	  || { apt-get update && apt-get install -y gcc libssl-dev python3-dev; }
	@mkdir -p $(SAN_DIR)
	gcc -shared -fPIC $(SAN_CFLAGS) -I"$(PY_INCLUDE)" $(SODIUM_CFLAGS) spark_kms/crypto/_fastgcm.c $(SODIUM_LIBS) \
	  -lcrypto -ldl -o $@

sanitize: sodium $(SAN_EXT)
	$(SAN_ENV) $(BIN)/python -c 'from spark_kms.crypto import _fastgcm as m; assert m.__file__ == "$(abspath $(SAN_EXT))", m'
	$(SAN_ENV) $(BIN)/python -m pytest $(SAN_PYTEST) tests/crypto
	$(SAN_ENV) SPARK_KMS_FUZZ_CASES=$(FUZZ_CASES) $(BIN)/python -m pytest $(SAN_PYTEST) -s \
	  tests/crypto/test_native_fuzz.py -k test_fuzz_native_and_pure_backends_agree

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/bench_spark.py

# `make dist`: the sdist (sources, docs, DAGs, notebooks, tests, bench: MANIFEST.in) and the wheel into dist/.
# Install the wheel with `pip install 'dist/spark_kms-0.1.0-<tags>.whl[spark]'` (tests/packaging/test_dist.py does).
# The wheel is built from the checkout, not from the sdist, so that it carries the fast-path jar `make jar` built
# (the sdist holds the jar's sources, not the jar: `make install` from it builds one).
dist: install
	rm -rf dist build/lib.* build/bdist.*  # no module removed since an earlier build may linger in the wheel
	$(BIN)/python -m build --sdist --outdir dist .
	$(BIN)/python -m build --wheel --outdir dist .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .demo build dist *.egg-info $(FASTPATH_JAR)
