# The two commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zocalo demo

.PHONY: rabbitmq-management
# The management API (zocalo.configure_rabbitmq and its tests); enabling is idempotent.
rabbitmq-management:
	rabbitmq-plugins enable rabbitmq_management
	scripts/wait-for-management http://127.0.0.1:15672/api/overview 60

.PHONY: activemq
# ActiveMQ Classic for the stomp tests (each session starts a private broker); idempotent.
activemq:
	scripts/install-activemq

.PHONY: slurm
# The packages of the Slurm tests' private cluster (tests/slurm_cluster.py); idempotent.
slurm:
	scripts/install-slurm

test: $(STAMP) rabbitmq-management activemq slurm
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) build dist .pytest_cache
