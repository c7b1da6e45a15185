# The two commands of the README: `make demo` (the main job) and `make test`.
# Each does its own set-up: a virtualenv in .venv with every extra installed from PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: install demo test lint format bench clean java

$(STAMP): pyproject.toml setup.py spark_kms/crypto/_fastgcm.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,test]'
	@touch $(STAMP)

install: java $(STAMP)

java:
	@command -v java >/dev/null 2>&1 || { echo "Spark needs Java 17: install a JDK 17 (e.g. apt-get install openjdk-17-jre-headless)"; exit 1; }

demo: install
	$(BIN)/spark-kms demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/bench_spark.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .demo build *.egg-info
