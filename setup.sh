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
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -r requirements.txt
if [ "$1" = test ]; then
  pip install -q -r requirements-test.txt
  pip install -q --no-deps -r requirements-pyreft.txt
  python -m pytest -q tests
else
  python train.py
fi
