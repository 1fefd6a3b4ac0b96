#!/usr/bin/env bash
# One command from a fresh clone to a result, offline apart from the package index:
#   bash setup.sh quickstart   # a .venv with torch, numpy, sentencepiece; then the quick start (python train.py)
#   bash setup.sh test         # the same plus the pinned test references; then the whole test suite
# TORCH_SPEC picks the PyTorch build (default torch==2.13.0; an already installed torch is kept).
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in
  quickstart|test) ;;
  *) echo "usage: bash setup.sh quickstart|test" >&2; exit 2 ;;
esac
say() { echo "setup: $*" >&2; }
[ -x .venv/bin/python ] || { say "creating .venv"; python3 -m venv .venv; }
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  say "installing ${TORCH_SPEC:-torch==2.13.0} (usually 1-3 minutes)"
  pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
say "installing numpy, sentencepiece (requirements.txt; seconds)"
pip install -q -r requirements.txt
if [ "$1" = test ]; then
  say "installing the test references: transformers, peft, pytest, ... (requirements-test.txt; usually 1-2 minutes)"
  pip install -q -r requirements-test.txt
  pip install -q --no-deps -r requirements-pyreft.txt
  say "running the test suite (about 5 minutes on 2 idle cores)"
  python -m pytest -q -rs tests
else
  say "running the quick start (python train.py)"
  python train.py
fi
say "done. For the other commands, activate the environment in your shell first: . .venv/bin/activate"
