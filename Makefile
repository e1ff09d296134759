# Two entry points: `make demo` and `make test`. Both create .venv and install what is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch and torchvision first, pinned, from pip (this machine has exactly those wheels on disk).
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages (Fashion-MNIST, Chromium, PostgreSQL) when apt is there; says what it could
# not install. Shared with .ci/run.
deps:
	bash scripts/system-deps.sh test

# The main job on the embedded default: the demo sweep into ./mlflow.db, its front, then the
# dashboard on it at http://127.0.0.1:8050/ (Ctrl-C stops it).
demo: $(STAMP)
	bash scripts/system-deps.sh demo
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/lilnetx sweep search_spaces/demo.yaml
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/lilnetx pareto --experiment demo
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/lilnetx dashboard --experiment demo

test: $(STAMP)
	bash scripts/system-deps.sh test
	$(BIN)/ruff check lilnetx explorer dashboards tests benchmarks examples
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check lilnetx explorer dashboards tests benchmarks examples

clean:
	rm -rf $(VENV) out
