"""Runs saved before the teaching refactor (tests/fixtures/legacy_v1, written by the code of commit 8cc26ac) still
load: renamed parameters (LoReFT rotation -> A, learned_source -> W; DiReFT learned_source -> W1, proj -> W2) are
mapped, the legacy short-prompt position rule is kept, and --resume continues to the same weights."""
import json
import shutil

import torch

import model as M
import reft
import train
from conftest import REPO
from support import saving
from support.tokenizer import load_tokenizer
from support.checkpoints import from_pretrained

FIXTURES = REPO / "tests" / "fixtures" / "legacy_v1"
STORIES = REPO / "assets" / "stories260K"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
FLAGS = {"loreft_f3": ["--method", "loreft", "--positions", "f3", "--layers", "0,3"],
         "direft_f1l1": ["--method", "direft", "--positions", "f1+l1", "--layers", "1,4"]}


def test_legacy_runs_load_with_their_weights_and_positions():
    model = from_pretrained(str(STORIES / "stories260K.bin"))
    tok = load_tokenizer(STORIES / "tok512.model")
    for run, expected in EXPECTED.items():
        method, mcfg, _ = saving.load(str(FIXTURES / run), model)
        assert mcfg.position_rule == "legacy"  # saved before the rule was recorded
        method.eval()
        for e in expected:
            ids = tok.encode(e["prompt"], bos=True)
            pos = mcfg.position_scheme().of(len(ids))[None]
            assert pos[0].tolist() == e["positions"], (run, e["prompt"])
            with torch.no_grad():
                gen = M.generate(model, torch.tensor([ids]), max_new_tokens=12, method=method, positions=pos, eos_id=1)
                logits = model(torch.tensor([ids]), method=method, positions=pos)[0, -1]
            assert gen[0].tolist() == e["tokens"], (run, e["prompt"])
            torch.testing.assert_close(logits[:5], torch.tensor(e["last_logits_0_5"]), atol=1e-4, rtol=1e-5)
    # "Hi" (3 tokens) is where the rules differ: the legacy f3 edits tokens 0-2, the paper's rule only token 0
    assert EXPECTED["loreft_f3"][2]["prompt"] == "Hi" and EXPECTED["loreft_f3"][2]["positions"] == [[0, 1, 2]]
    assert reft.reft_positions(3, 3, 0, False).tolist() == [[0, -1, -1]]


def test_legacy_checkpoint_resumes_to_the_same_weights(tmp_path):
    for run, flags in FLAGS.items():
        out = tmp_path / run
        shutil.copytree(FIXTURES / run, out)
        train.train(train.parse_args(["--model", str(STORIES / "stories260K.bin"), "--tokenizer",
                                      str(STORIES / "tok512.model"), "--data", str(REPO / "examples/steer_train.jsonl"),
                                      *flags, "--rank", "2", "--lr", "0.05", "--max-steps", "5", "--out", str(out),
                                      "--resume"]))
        got = torch.load(out / "reft.pt", weights_only=True)
        assert got["config"]["position_rule"] == "legacy"
        want = saving.upgrade_state_dict(torch.load(FIXTURES / f"{run}_after_resume_to_5.pt", weights_only=True),
                                         got["config"]["method"])
        assert set(got["state_dict"]) == set(want)
        for k in want:
            torch.testing.assert_close(got["state_dict"][k], want[k], atol=1e-5, rtol=1e-5)
