# `make run` opens torchdeck on its demo; `make test` runs the suite. Both create .venv if missing.
# torch is pinned here, first, so that this machine takes its CPU build from disk (a GPU box
# takes the same version's CUDA build); the project itself asks only for torch>=2.6. The test
# extras (Lightning, transformers, ...) are installed against .ci/constraints.txt, which holds
# torch where it is, so none of them replaces it.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= $(shell grep -m1 '^torch==' .ci/constraints.txt)
STAMP := $(VENV)/.installed
# timm imports torchvision, and PyPI's torchvision does not import beside the torch above: timm's
# checkpoints for the tests are written in a venv of their own (tests/real/make_timm.py).
TIMM_VENV ?= .venv-timm
TIMM_STAMP := $(TIMM_VENV)/.installed
REAL_OUT := tests/real/generated

.PHONY: run test real-timm screenshots bench clean

$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c .ci/constraints.txt -e '.[test,real]'
	touch $(STAMP)

$(TIMM_STAMP): .ci/timm-requirements.txt
	test -x $(TIMM_VENV)/bin/python || python3 -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip install -q -r .ci/timm-requirements.txt
	touch $(TIMM_STAMP)

# timm.json is written last: a generator that died leaves none, and the next make runs it again.
$(REAL_OUT)/timm/timm.json: $(TIMM_STAMP) tests/real/make_timm.py
	rm -rf $(REAL_OUT)/timm
	$(TIMM_VENV)/bin/python tests/real/make_timm.py $(REAL_OUT)/timm

real-timm: $(REAL_OUT)/timm/timm.json

run: $(STAMP)
	$(VENV)/bin/torchdeck

# With TORCHDECK_REAL_REQUIRED the real-library tests fail, not skip, when a library or the
# generated timm files are missing (a plain `pytest` skips them, naming this target).
test: $(STAMP) $(REAL_OUT)/timm/timm.json
	TORCHDECK_REAL_REQUIRED=1 $(VENV)/bin/pytest -q

screenshots: $(STAMP)
	$(PY) -m torchdeck.tui.screenshots screenshots

bench: $(STAMP)
	$(PY) benchmarks/bench_first_frame.py
	$(PY) benchmarks/bench_train_throughput.py
	$(PY) benchmarks/bench_loop_overhead.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_loss_latency.py
	$(PY) benchmarks/bench_monitor.py
	$(PY) benchmarks/bench_history.py
	$(PY) benchmarks/bench_chart.py
	$(PY) benchmarks/bench_log.py
	$(PY) benchmarks/bench_chunk_metrics.py
	$(PY) benchmarks/bench_export.py
	$(PY) benchmarks/bench_summary.py
	$(PY) benchmarks/bench_tail.py
	$(PY) benchmarks/bench_inspect.py
	$(PY) benchmarks/bench_ckpt_load.py
	$(PY) benchmarks/bench_ckpt_save.py
	$(PY) benchmarks/bench_diff.py
	$(PY) benchmarks/bench_resume.py
	$(PY) benchmarks/bench_log_api.py
	$(PY) benchmarks/bench_sources.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) $(REAL_OUT) build *.egg-info
