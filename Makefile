# Two commands do all the set-up on a fresh machine (Python 3.10+ with venv):
#   make app    - create .venv, install, serve the demo on the shipped checkpoints (offline is fine)
#   make test   - the same environment plus test tools and Debian's chromium, then the whole test suite
#   make test-fast - the unit tests only (tests/unit: no training process, no server, no browser)
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: an unpinned torch may pull a multi-GB CUDA build where a CPU build is available locally.
TORCH := torch==2.13.0

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $@

.PHONY: app test test-fast
app: $(VENV)/.installed
	$(PY) app.py

test: $(VENV)/.dev-installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=10 tests

test-fast: $(VENV)/.dev-installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=5 tests/unit
