#!/usr/bin/env bash
# The GPU checks of issue 15 as one command, for a GPU host that has its own torch build and no hub
# access (README, "On a GPU host"): the backend and engine test files, then bench/gpu_suite.py.
# Streamlit and Chromium are not needed: the AppTest and browser files are left out.
#
#   WHEELS=path/to/wheels OUT=dir bash bench/device_check.sh
#
# WHEELS (optional): a folder of the pinned wheels that the host's Python lacks, installed into
# /tmp/site (--no-deps). OUT: where the logs and the table go. TEST_BUDGET_S and SUITE_BUDGET_S bound
# the two parts (defaults: 170 s and 320 s; the whole takes under 9 minutes).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/featurescope-device-check}
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# sae_lens imports wandb when it is imported, and uses it only to log training runs.
if ! "$PY" -c "import wandb" 2>/dev/null; then
  mkdir -p /tmp/stubs/wandb
  echo '"""A stand-in: sae_lens imports wandb at import time; nothing here trains."""' \
    > /tmp/stubs/wandb/__init__.py
  export PYTHONPATH=/tmp/stubs:${PYTHONPATH:-}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
"$PY" -c "import torch, transformers, transformer_lens, sae_lens, circuit_tracer; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"

TESTS="tests/test_analyze.py tests/test_cli.py tests/test_compare.py tests/test_corpus_store.py
  tests/test_experiments.py tests/test_graph.py tests/test_models_memory.py tests/test_steering.py
  tests/test_corpus_build.py tests/test_corpus_resume.py tests/test_corpus_errors.py tests/test_catalog.py
  tests/test_contract.py tests/test_prune.py"
WORKERS=""
"$PY" -c "import xdist" 2>/dev/null && WORKERS="-n 4 --dist loadfile"
# shellcheck disable=SC2086
timeout "${TEST_BUDGET_S:-170}" "$PY" -m pytest -v -p no:cacheprovider $WORKERS $TESTS 2>&1 | tee "$OUT/tests.log" \
  | grep -E "FAILED|ERROR|[0-9]+ (passed|failed)" | tail -40
echo "tests exit: ${PIPESTATUS[0]}"

"$PY" bench/gpu_suite.py --out "$OUT" --budget-s "${SUITE_BUDGET_S:-320}"
