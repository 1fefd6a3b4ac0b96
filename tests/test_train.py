"""data.py datasets/positions and train.py end to end: the quick-start task on the real stories260K model."""
import json
import subprocess
import sys

import pytest
import torch

import data
import model as M
import reft
import train
from conftest import REPO

STEER_TRAIN, STEER_EVAL = REPO / "examples" / "steer_train.jsonl", REPO / "examples" / "steer_eval.jsonl"


# ------------------------------------------------------------------------------------------------ positions


def test_reft_positions_worked_examples():
    # the docstring's examples
    assert data.reft_positions(5, 2, 2, False, offset=3).tolist() == [[3, 4], [6, 7]]
    assert data.reft_positions(5, 2, 2, True, offset=3).tolist() == [[3, 4, 6, 7]]
    assert data.reft_positions(3, 2, 2, False).tolist() == [[0, -1], [1, 2]]
    # short prompts: floor(n/2) first, ceil(n/2) last, never overlapping; a 1-token prompt keeps its last token
    assert data.reft_positions(1, 1, 1, False).tolist() == [[-1], [0]]
    assert data.reft_positions(2, 3, 3, True).tolist() == [[0, 1, -1, -1, -1, -1]]
    # only first or only last: up to the whole prompt
    assert data.reft_positions(2, 3, 0, False).tolist() == [[0, 1, -1]]
    assert data.reft_positions(4, 0, 2, False).tolist() == [[2, 3]]


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = M.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return M.Llama(cfg).eval()


@pytest.mark.parametrize("method_name", ["loreft", "direft"])
@pytest.mark.parametrize("share", [False, True])
def test_padded_batches_equal_single_examples(method_name, share):
    """Right padding (training) and left padding (generation) edit the same tokens as unpadded single runs."""
    model = _tiny_llama()
    mcfg = reft.MethodConfig(method=method_name, layers=[0, 1], positions="f2+l2", share_weights=share, rank=3)
    torch.manual_seed(1)
    method = reft.build_method(mcfg, model).eval()
    exs = [{"input_ids": [1, 5, 6, 7, 8, 9, 10, 11], "labels": [-100] * 5 + [9, 10, 11], "prompt_len": 5},
           {"input_ids": [1, 12, 13, 14], "labels": [-100] * 3 + [14], "prompt_len": 3}]
    singles = []
    for e in exs:
        b = data.collate([e], 0, 2, 2, share)
        singles.append(model(b["input_ids"], method=method, positions=b["positions"])[0])
    for side in ("right", "left"):
        b = data.collate(exs, 0, 2, 2, share, padding_side=side)
        out = model(b["input_ids"], b["attention_mask"], method=method, positions=b["positions"])
        for i, e in enumerate(exs):
            real = b["attention_mask"][i].bool()
            torch.testing.assert_close(out[i][real], singles[i], atol=1e-5, rtol=1e-4)
    # and the edit is real: without the method the logits differ
    b = data.collate(exs[:1], 0, 2, 2, share)
    assert not torch.allclose(model(b["input_ids"])[0], singles[0], atol=1e-3)


# ------------------------------------------------------------------------------------------------ records


def test_tokenize_examples_labels_and_truncation(stories260k, capsys):
    tok = data.load_tokenizer(str(stories260k / "tok512.model"))
    recs = [{"prompt": "Lily had a red ball.", "response": "She was happy."},
            {"instruction": "Say hi", "input": "", "output": "hi there " * 80},
            {"prompt": "word " * 200, "response": "x"}]
    exs = data.tokenize_examples(recs, tok, "auto", max_length=160, eos_id=1)
    assert len(exs) == 2  # the third prompt alone is longer than max_length: skipped, counted
    e = exs[0]
    prompt_ids = tok.encode("Lily had a red ball.", bos=True)
    assert e["prompt_len"] == len(prompt_ids) and e["input_ids"][:e["prompt_len"]] == prompt_ids
    assert e["labels"][:e["prompt_len"]] == [-100] * e["prompt_len"]
    assert e["labels"][e["prompt_len"]:] == tok.encode("She was happy.", bos=False) + [1]
    assert len(exs[1]["input_ids"]) == 160  # cut at the end
    err = capsys.readouterr().err
    assert "1 example(s) truncated" in err and "1 skipped" in err
    assert data.format_prompt(recs[1], "auto").startswith("Below is an instruction")
    assert data.format_prompt(recs[1], "raw") == "Say hi"
    assert data.format_prompt({"instruction": "Add", "input": "1+1"}, "plain") == "Add\n1+1\n"


@pytest.mark.parametrize("content,suffix,message", [
    ('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": \n', ".jsonl", r"bad\.jsonl:2: invalid JSON"),
    ('{"prompt": "a"}\n', ".jsonl", r":1: missing field 'response'"),
    ('{"prompt": "a", "response": 3}\n', ".jsonl", r"field 'response' must be a string"),
    ('{"prompt": "  ", "response": "b"}\n', ".jsonl", r"field 'prompt' is empty"),
    ('{"text": "a"}\n', ".jsonl", r"no prompt/response or instruction/output"),
    ('[{"instruction": "a", "output": "b"}, 5]', ".json", r"record 1: expected a JSON object"),
    ('{"prompt": "a", "response": "b"}', ".json", r"expected a JSON list"),
    ('', ".jsonl", r"no records"),
])
def test_bad_records(tmp_path, content, suffix, message):
    path = tmp_path / ("bad" + suffix)
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        data.read_records(str(path))


# ------------------------------------------------------------------------------------------------ end to end


def _args(stories260k, out, *extra):
    return ["--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
            "--out", str(out), *extra]


QUICK = ["--data", str(STEER_TRAIN), "--eval-data", str(STEER_EVAL)]  # the defaults are the quick start's


# measured (seed 0, CPU): loreft 0.76, direft 0.82, prefix 0.48, pedro 1.0 held-out exact match; the base model 0
@pytest.mark.parametrize("method_name,min_em", [("loreft", 0.7), ("direft", 0.7), ("prefix", 0.4), ("pedro", 0.9)])
def test_quick_start_learns_the_steering_task(stories260k, tmp_path, method_name, min_em):
    """The README's quick start: held-out exact match from the run itself, base weights untouched."""
    cfg = train.parse_args(_args(stories260k, tmp_path, *QUICK, "--method", method_name))
    base_before = {k: v.clone() for k, v in M.from_pretrained(cfg.model).state_dict().items()}
    result = train.train(cfg)
    assert result["n"] == 50 and result["exact_match"] >= min_em, result
    model, tok = train.load_model_and_tokenizer(cfg)
    assert all(torch.equal(v, base_before[k]) for k, v in model.state_dict().items())
    method, mcfg, _ = reft.load(str(tmp_path), model)  # the saved method reproduces the run's score exactly
    exs = data.tokenize_examples(data.read_records(str(STEER_EVAL)), tok, eos_id=1)
    preds = train.generate_batch(model, tok, method.eval(), mcfg, exs, 32, "cpu")
    assert sum(p.strip() == train.data_response(e).strip() for p, e in zip(preds, exs)) / len(exs) == \
        result["exact_match"]
    assert (tmp_path / "reft.pt").stat().st_size < 100_000  # only the method's weights: kilobytes


def test_resume_loses_nothing_and_seed_is_deterministic(stories260k, tmp_path):
    common = ["--data", str(STEER_TRAIN), "--eval-fraction", "0.1", "--epochs", "2", "--batch-size", "16",
              "--rank", "2", "--layers", "1,3"]
    train.train(train.parse_args(_args(stories260k, tmp_path / "straight", *common)))
    train.train(train.parse_args(_args(stories260k, tmp_path / "again", *common)))
    train.train(train.parse_args(_args(stories260k, tmp_path / "cut", *common, "--max-steps", "23")))
    train.train(train.parse_args(_args(stories260k, tmp_path / "cut", *common, "--resume")))
    sd = {name: torch.load(tmp_path / name / "reft.pt")["state_dict"] for name in ("straight", "again", "cut")}
    for k in sd["straight"]:
        assert torch.equal(sd["straight"][k], sd["again"][k]), k  # same seed, same weights
        assert torch.equal(sd["straight"][k], sd["cut"][k]), k  # interrupted + resumed == uninterrupted


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_load_and_generate_cli(stories260k, tmp_path):
    out = tmp_path / "run"
    r = _cli(*_args(stories260k, out, "--data", str(STEER_TRAIN), "--epochs", "1", "--layers", "2", "--rank", "2"))
    assert r.returncode == 0, r.stderr
    assert "trainable params: 516 " in r.stderr and "step 34/34" in r.stderr  # 2 groups x (2*64*2+2); 270/8
    assert "exact_match" in r.stdout.splitlines()[-1]
    r = _cli("--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
             "--load", str(out), "--prompt", "Tom had a blue car.", "--max-new-tokens", "12")
    assert r.returncode == 0 and r.stdout.startswith("Tom had a blue car."), r.stderr
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tom had a blue car.\nSue had a red hat.\n")
    r = _cli("--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
             "--load", str(out), "--prompts-file", str(prompts), "--max-new-tokens", "12")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2 and r.stdout.startswith("Tom had a blue car.\t")


@pytest.mark.parametrize("flags,message", [
    (["--positions", "f1+x"], "bad positions 'f1+x'"),
    (["--layers", "0,9"], "bad layers '0,9'"),
    (["--rank", "0"], "rank must be positive"),
    (["--method", "lora"], "unknown method 'lora'"),
    (["--data", "missing.jsonl"], "data file missing.jsonl does not exist"),
])
def test_bad_flags_give_one_line_errors(stories260k, tmp_path, flags, message):
    base = ["--data", str(STEER_TRAIN)] if "--data" not in flags else []
    r = _cli(*_args(stories260k, tmp_path, *base, *flags))
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_load_on_a_different_base_model_is_refused(stories260k, tmp_path):
    cfg = reft.MethodConfig(layers=[0], rank=2)
    model = M.from_pretrained(str(stories260k / "stories260K.bin"))
    reft.save(str(tmp_path), reft.build_method(cfg, model), cfg, model)
    other = M.from_pretrained(str(stories260k / "stories260K.bin"))
    with torch.no_grad():
        other.embed_tokens.weight.mul_(1.1)
    with pytest.raises(ValueError, match="different base model"):
        reft.load(str(tmp_path), other)
    r = _cli("--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
             "--load", str(tmp_path / "nothing"), "--prompt", "hi")
    assert r.returncode != 0 and "no such folder" in r.stderr and "Traceback" not in r.stderr
