# The two commands a newcomer needs: `make run` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: run test lint setup browser demo demo-store bench bench-gpu lock service clean

run: setup  ## set up, then open the app in the browser
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: setup browser lint  ## set up, check the rules, then run every test (offline)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: setup  ## ruff (pyflakes, pycodestyle, isort, bugbear, banned imports per layer) and mypy on backend/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

setup: $(STAMP)

$(STAMP): requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Headless Chromium for the browser test, from Debian (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium and chromium-driver for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: setup  ## rebuild the offline demo pack in assets/demo, then its corpus stores
	$(PY) -m backend.demo build
	$(MAKE) demo-store

demo-store: setup  ## the demo pack's corpus stores over its whole corpus (first use builds a smaller one)
	$(PY) -m backend.corpus build --model demo --sae-set res
	$(PY) -m backend.corpus build --model demo --sae-set demo

bench: setup  ## run every benchmark with its default (quick) sizes
	@for b in bench/*.py; do case $$b in */gpu_suite.py|*/shapes.py|*/timing.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b || exit 1; done

bench-gpu: setup  ## every benchmark at GPT-2 small and Gemma-2-2B shapes (a GPU host); table in bench/results/
	$(PY) bench/gpu_suite.py

service: setup  ## the HTTP service on 127.0.0.1:8000
	$(PY) -m backend.http.service --host 127.0.0.1 --port 8000

lock:  ## re-pin requirements.txt from requirements.in in a fresh venv
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Generated from requirements.in by \`make lock\` (pip freeze of a fresh venv). Do not edit by hand."; \
	  .lock-venv/bin/pip freeze | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > requirements.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache test-output
