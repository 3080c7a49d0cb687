# `make run` opens torchdeck on its demo; `make test` runs the suite. Both create .venv if missing.
# torch is pinned here, first, so that this machine takes its CPU build from disk (a GPU box
# takes the same version's CUDA build); the project itself asks only for torch>=2.6.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run test screenshots bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/torchdeck

test: $(STAMP)
	$(VENV)/bin/pytest -q

screenshots: $(STAMP)
	$(PY) -m torchdeck.tui.screenshots screenshots

bench: $(STAMP)
	$(PY) benchmarks/bench_first_frame.py
	$(PY) benchmarks/bench_train_throughput.py
	$(PY) benchmarks/bench_loss_latency.py
	$(PY) benchmarks/bench_summary.py
	$(PY) benchmarks/bench_tail.py
	$(PY) benchmarks/bench_inspect.py
	$(PY) benchmarks/bench_ckpt_load.py
	$(PY) benchmarks/bench_diff.py
	$(PY) benchmarks/bench_ckpt_save.py

clean:
	rm -rf $(VENV) build *.egg-info
