"""data.py datasets/positions and train.py end to end: the quick-start task on the real stories260K model."""
import json

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import data
import model as M
import reft
import train
from support import tokenizer as tokmod
from support import records
from support import classify, defaults
from support import saving
from support import pyreft_import
from conftest import REPO, loreft_state, run_train_cli, write_pyreft_folder
from support import cli
from support.checkpoints import from_pretrained

STEER_TRAIN, STEER_EVAL = REPO / "examples" / "steer_train.jsonl", REPO / "examples" / "steer_eval.jsonl"
SENT_TRAIN, SENT_DEV = REPO / "examples" / "sentiment_train.jsonl", REPO / "examples" / "sentiment_dev.jsonl"


# ------------------------------------------------------------------------------------------------ positions


def test_reft_positions_worked_examples():
    # the docstring's examples
    assert reft.reft_positions(5, 2, 2, False, offset=3).tolist() == [[3, 4], [6, 7]]
    assert reft.reft_positions(5, 2, 2, True, offset=3).tolist() == [[3, 4, 6, 7]]
    assert reft.reft_positions(3, 2, 2, False).tolist() == [[0, -1], [1, 2]]
    # short prompts: floor(n/2) first, ceil(n/2) last, never overlapping; a 1-token prompt keeps its last token
    assert reft.reft_positions(1, 1, 1, False).tolist() == [[-1], [0]]
    assert reft.reft_positions(2, 3, 3, True).tolist() == [[0, 1, -1, -1, -1, -1]]
    # only first or only last: the paper's rule too (first <= floor(n/2), last <= ceil(n/2)); "legacy" kept the old
    # min(A, n) for runs saved before it
    assert reft.reft_positions(2, 3, 0, False).tolist() == [[0, -1, -1]]
    assert reft.reft_positions(5, 3, 0, False).tolist() == [[0, 1, -1]]
    assert reft.reft_positions(5, 0, 4, False).tolist() == [[2, 3, 4, -1]]
    assert reft.reft_positions(4, 0, 2, False).tolist() == [[2, 3]]
    assert saving.legacy_positions(2, 3, 0, False).tolist() == [[0, 1, -1]]
    assert saving.legacy_positions(5, 0, 4, False).tolist() == [[1, 2, 3, 4]]
    assert saving.legacy_positions(3, 2, 2, False).tolist() == [[0, -1], [1, 2]]  # fA+lB: the same


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = M.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return M.Llama(cfg).eval()


@pytest.mark.parametrize("method_name,share", [("loreft", False), ("loreft", True), ("direft", False),
                                               ("direft", True), ("prefix", False), ("pedro", False)])
@torch.no_grad()
def test_padded_batches_equal_single_examples(method_name, share):
    """Right padding (training) and left padding (generation) edit the same tokens as unpadded single runs, with
    train.py's batches: data.collate's positions and prompt_mask (prompt + response)."""
    model = _tiny_llama()
    mcfg = reft.MethodConfig(method=method_name, layers=[0, 1], positions="f2+l2", share_weights=share, rank=3,
                             num_virtual_tokens=3)
    torch.manual_seed(1)
    method = reft.build_method(mcfg, model).eval()
    if method_name in ("prefix", "pedro"):  # PEDRO starts as the identity (W_up = 0): random weights show the edit
        for p in method.parameters():
            p.normal_(0, 0.3)
    scheme = mcfg.position_scheme()
    exs = [{"input_ids": [1, 5, 6, 7, 8, 9, 10, 11], "labels": [-100] * 5 + [9, 10, 11], "prompt_len": 5},
           {"input_ids": [1, 12, 13, 14], "labels": [-100] * 3 + [14], "prompt_len": 3}]

    def run(b, mask=None):
        return model(b["input_ids"], mask, method=method, positions=b.get("positions"), prompt_mask=b["prompt_mask"])

    singles = [run(data.collate([e], 0, scheme))[0] for e in exs]
    for side in ("right", "left"):
        b = data.collate(exs, 0, scheme, padding_side=side)
        out = run(b, b["attention_mask"])
        for i, e in enumerate(exs):
            real = b["attention_mask"][i].bool()
            torch.testing.assert_close(out[i][real], singles[i], atol=1e-5, rtol=1e-4)
    for e, single in zip(exs, singles):  # the prompt's logits do not depend on the response (as in generation)
        prompt = run(data.collate([e], 0, scheme, with_labels=False))[0]
        torch.testing.assert_close(single[:e["prompt_len"]], prompt, atol=1e-5, rtol=1e-4)
    # and the edit is real: without the method the logits differ
    b = data.collate(exs[:1], 0, scheme)
    assert not torch.allclose(model(b["input_ids"])[0], singles[0], atol=1e-3)


# ------------------------------------------------------------------------------------------------ records


def test_tokenize_examples_labels_and_truncation(stories260k, capsys):
    tok = tokmod.load_tokenizer(str(stories260k / "tok512.model"))
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
        records.read_records(str(path))


# ------------------------------------------------------------------------------------------------ end to end


def _args(stories260k, out, *extra):
    return ["--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
            "--out", str(out), *extra]


QUICK = ["--data", str(STEER_TRAIN), "--eval-data", str(STEER_EVAL)]  # the defaults are the quick start's


# measured (seed 0, CPU, the defaults of support/defaults.py): loreft 0.86, direft 0.78, prefix 0.64, pedro 1.0,
# lora 1.0 held-out exact match; the base model 0
@pytest.mark.parametrize("method_name,min_em", [("loreft", 0.7), ("direft", 0.7), ("prefix", 0.4), ("pedro", 0.9),
                                                ("lora", 0.9)])
def test_quick_start_learns_the_steering_task(stories260k, tmp_path, method_name, min_em):
    """The README's quick start: held-out exact match from the run itself, base weights untouched."""
    cfg = train.parse_args(_args(stories260k, tmp_path, *QUICK, "--method", method_name))
    base_before = {k: v.clone() for k, v in from_pretrained(cfg.model).state_dict().items()}
    result = train.train(cfg)
    assert result["n"] == 50 and result["exact_match"] >= min_em, result
    model, tok = train.load_model_and_tokenizer(cfg)
    assert all(torch.equal(v, base_before[k]) for k, v in model.state_dict().items())
    method, mcfg, _ = saving.load(str(tmp_path), model)  # the saved method reproduces the run's score exactly
    exs = data.tokenize_examples(records.read_records(str(STEER_EVAL)), tok, eos_id=1)
    preds = [tok.decode(i) for i in train.generate_ids(model, tok, method.eval(), mcfg, exs, 32, "cpu")]
    assert sum(p.strip() == data.response_of(e["record"]).strip() for p, e in zip(preds, exs)) / len(exs) == \
        result["exact_match"]
    assert (tmp_path / "reft.pt").stat().st_size < 100_000  # only the method's weights: kilobytes


def record_initial_weights(monkeypatch) -> list[dict]:
    """Patch reft.build_method (as train.py calls it) to keep a copy of every freshly built method's weights."""
    inits, build = [], reft.build_method

    def recording_build(mcfg, model):
        method = build(mcfg, model)
        inits.append({k: v.detach().clone() for k, v in method.state_dict().items()})
        return method

    monkeypatch.setattr(reft, "build_method", recording_build)
    return inits


def test_resume_loses_nothing_and_seed_is_deterministic(stories260k, tmp_path, monkeypatch):
    inits = record_initial_weights(monkeypatch)
    common = ["--data", str(STEER_TRAIN), "--eval-fraction", "0.1", "--epochs", "2", "--batch-size", "16",
              "--rank", "2", "--layers", "1,3"]
    train.train(train.parse_args(_args(stories260k, tmp_path / "straight", *common)))
    train.train(train.parse_args(_args(stories260k, tmp_path / "again", *common)))
    train.train(train.parse_args(_args(stories260k, tmp_path / "cut", *common, "--max-steps", "23")))
    # the scheduler: 270 training examples / 16 = 17 steps per epoch, 34 in all, int(0.1 * 34) = 3 warm-up steps
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 23 and ck["opt"]["param_groups"][0]["lr"] == pytest.approx(
        defaults.lr_of("lm", "loreft") * train.lr_factor(23, 3, 34))  # LoReFT's default: linear decay
    train.train(train.parse_args(_args(stories260k, tmp_path / "cut", *common, "--resume")))
    sd = {name: torch.load(tmp_path / name / "reft.pt")["state_dict"] for name in ("straight", "again", "cut")}
    assert len(inits) == 4 and sd["straight"].keys() == inits[0].keys()
    for k in sd["straight"]:
        assert torch.equal(sd["straight"][k], sd["again"][k]), k  # same seed, same weights
        assert torch.equal(sd["straight"][k], sd["cut"][k]), k  # interrupted + resumed == uninterrupted
        assert float((sd["straight"][k] - inits[0][k]).abs().max()) > 1e-3, k  # and training moved every tensor


def test_resume_without_a_checkpoint_is_an_error(stories260k, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(_args(stories260k, tmp_path / "empty", "--data", str(STEER_TRAIN), "--resume"))
    assert e.value.code == f"error: --resume: no checkpoint.pt in {tmp_path / 'empty'}"
    assert not (tmp_path / "empty").exists()  # it did not start from scratch


class Crash(Exception):
    pass


def crash_after_steps(n: int):
    """A global optimizer hook that raises in the optimizer step after `n` steps (once it has updated the weights,
    before train.py counts the step or saves anything), as a crash would; returns the handle to remove it."""
    done = []

    def hook(opt, args, kwargs):
        done.append(1)
        if len(done) > n:
            raise Crash(f"simulated crash in optimizer step {len(done)}")

    return register_optimizer_step_post_hook(hook)


def test_save_every_loses_at_most_n_steps(stories260k, tmp_path, monkeypatch, capsys):
    """A run that crashes after step 7 with --save-every 5 resumes from step 5 (mid-epoch, mid-accumulation order)
    and ends with the uninterrupted run's weights exactly; without --save-every the same crash leaves nothing."""
    inits = record_initial_weights(monkeypatch)
    # 270 training examples in micro-batches of 8, 2 per step: 17 steps; dropout so the saved RNG state matters
    common = ["--data", str(STEER_TRAIN), "--eval-fraction", "0.1", "--epochs", "1", "--batch-size", "8",
              "--grad-accum", "2", "--rank", "2", "--layers", "1,3", "--dropout", "0.1"]
    train.train(train.parse_args(_args(stories260k, tmp_path / "straight", *common)))
    for name, flags in (("crashed", ["--save-every", "5"]), ("unsaved", [])):
        handle = crash_after_steps(7)
        try:
            with pytest.raises(Crash, match="optimizer step 8"):
                train.train(train.parse_args(_args(stories260k, tmp_path / name, *common, *flags)))
        finally:
            handle.remove()
    assert not (tmp_path / "unsaved" / "checkpoint.pt").exists()  # the end-of-epoch save alone never came
    ck = torch.load(tmp_path / "crashed" / "checkpoint.pt", weights_only=False)
    assert (ck["step"], ck["epoch"], ck["batch"]) == (5, 0, 10)  # after step 5: 5 steps x 2 micro-batches done
    capsys.readouterr()
    train.train(train.parse_args(_args(stories260k, tmp_path / "crashed", *common, "--save-every", "5", "--resume")))
    assert f"resumed from {tmp_path / 'crashed' / 'checkpoint.pt'} at step 5" in capsys.readouterr().err
    sd = {name: torch.load(tmp_path / name / "reft.pt")["state_dict"] for name in ("straight", "crashed")}
    assert len(inits) == 4 and sd["straight"].keys() == inits[0].keys()
    for k in sd["straight"]:
        assert torch.equal(sd["straight"][k], sd["crashed"][k]), k  # crashed + resumed == uninterrupted
        assert float((sd["straight"][k] - inits[0][k]).abs().max()) > 1e-3, k  # and training moved every tensor


def test_lr_schedule():
    """Linear warm-up from lr/(warm+1) to lr at step warm, then linear decay towards 0 at step total."""
    assert [train.lr_factor(s, 2, 6) for s in range(7)] == pytest.approx([1 / 3, 2 / 3, 1, 3 / 4, 1 / 2, 1 / 4, 0])
    assert [train.lr_factor(s, 0, 4) for s in range(5)] == pytest.approx([1, 3 / 4, 1 / 2, 1 / 4, 0])
    assert train.lr_factor(0, 0, 1) == 1.0  # a one-step run takes its step at the full lr
    # --schedule cosine: the same warm-up, then (1 + cos πt)/2; constant: 1 after the warm-up
    assert [train.lr_factor(s, 2, 6, "cosine") for s in range(7)] == pytest.approx(
        [1 / 3, 2 / 3, 1, (1 + 2 ** -0.5) / 2, 1 / 2, (1 - 2 ** -0.5) / 2, 0])
    assert [train.lr_factor(s, 2, 6, "constant") for s in range(7)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1])
    cfg = train.TrainConfig(schedule="cosine", warmup=0.0, epochs=1, batch_size=1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, lrs = train.schedule(cfg, opt, 4), []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs == pytest.approx([1, (1 + 2 ** -0.5) / 2, 1 / 2, (1 - 2 ** -0.5) / 2])


def test_grad_accum_equals_one_big_batch(stories260k, tmp_path):
    """One optimizer step over 8 examples: batch 8 == 2 micro-batches of 4, because the loss is the mean over all
    the step's response tokens (the micro-batches here hold very different numbers of them)."""
    # train.py's order for seed 0, epoch 0: micro-batches [4, 0, 7, 3] and [2, 5, 1, 6]; the first gets the long
    # responses (mean of micro-batch means != token mean), one big batch all of them
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    long = set(order[:4])
    records = [{"prompt": f"Tom had a {c} ball.", "response": "He was happy. " * (8 if i in long else 1)}
               for i, c in enumerate(["red", "blue", "big", "small", "green", "pink", "old", "new"])]
    path = tmp_path / "eight.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    weights = {}
    for bs, accum in (("8", "1"), ("4", "2")):
        out = tmp_path / f"b{bs}x{accum}"
        train.train(train.parse_args(_args(stories260k, out, "--data", str(path), "--eval-data", str(path),
                                           "--epochs", "1", "--max-steps", "1", "--batch-size", bs,
                                           "--grad-accum", accum, "--layers", "1,3", "--rank", "2")))
        weights[bs] = torch.load(out / "reft.pt")["state_dict"]
        assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 1
    for k in weights["8"]:
        torch.testing.assert_close(weights["4"][k], weights["8"][k], atol=1e-6, rtol=1e-5)


_cli = run_train_cli


def _load_args(stories260k, folder, *extra):
    return ["--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
            "--load", str(folder), *extra]


def _expected_text(stories260k, method, mcfg, prompt, max_new_tokens) -> str:
    """The prompt and its greedy continuation (up to the end token, BOS for llama2.c) with model.generate directly."""
    model = from_pretrained(str(stories260k / "stories260K.bin"))
    tok = tokmod.load_tokenizer(str(stories260k / "tok512.model"))
    ids = tok.encode(data.format_prompt({"prompt": prompt}, "auto"), bos=True)
    positions = None
    if method is not None and mcfg.method in ("loreft", "direft"):
        positions = mcfg.position_scheme().of(len(ids))[None]  # [1, G, n]
    with torch.no_grad():
        new = M.generate(model, torch.tensor([ids]), None, max_new_tokens, eos_id=1, method=method,
                         positions=positions)[0].tolist()
    return tok.decode(ids + (new[:new.index(1)] if 1 in new else new))


@pytest.mark.parametrize("method_name,flags,n_params", [
    ("loreft", ["--epochs", "1", "--layers", "2", "--rank", "2"], "516"),  # 2 groups x (2*64*2+2)
    ("prefix", ["--max-steps", "10", "--num-virtual-tokens", "4"], "1,280"),  # 5 layers x (k, v) x 4 heads x 4 x 8
    ("pedro", ["--max-steps", "20", "--lr", "3e-2", "--layers", "1,3", "--rank", "2"], "1,888"),  # 2 x (130+10+3*268)
])
def test_load_and_generate_cli(stories260k, tmp_path, method_name, flags, n_params):
    out = tmp_path / "run"
    r = _cli(*_args(stories260k, out, "--data", str(STEER_TRAIN), "--method", method_name, *flags))
    assert r.returncode == 0, r.stderr
    assert f"trainable params: {n_params} " in r.stderr
    method, mcfg, _ = saving.load(str(out), from_pretrained(str(stories260k / "stories260K.bin")))
    if method_name == "loreft":  # a whole epoch (270/8 steps), evaluated, with the default positions
        assert "step 34/34" in r.stderr and "exact_match" in r.stdout.splitlines()[-1] and mcfg.positions == "f3+l3"
    # the CLI's generation equals model.generate with the saved method, which differs from the base model's
    prompt = "Tom had a blue car."
    expected = _expected_text(stories260k, method.eval(), mcfg, prompt, 12)
    assert expected != _expected_text(stories260k, None, mcfg, prompt, 12)
    r = _cli(*_load_args(stories260k, out, "--prompt", prompt, "--max-new-tokens", "12"))
    assert r.returncode == 0 and r.stdout == expected + "\n", r.stderr
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tom had a blue car.\nSue had a red hat.\n")
    r = _cli(*_load_args(stories260k, out, "--prompts-file", str(prompts), "--max-new-tokens", "12"))
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2 and r.stdout.startswith("Tom had a blue car.\t")


def test_load_a_pyreft_folder_cli(stories260k, tmp_path, capsys):
    """A folder in pyreft's format (untied f1+l1 LoReFT on layers 0 and 2): --load --positions --prompt generates what
    pyreft_import.load_pyreft + model.generate give; without --positions, a one-line error (pyreft does not save them)."""
    folder = write_pyreft_folder(tmp_path / "pyreft", "LoreftIntervention", [0, 2, 0, 2],
                                 [loreft_state(seed) for seed in range(4)])
    prompt = "Lily had a red ball."
    cli.main(_load_args(stories260k, folder, "--positions", "f1+l1", "--prompt", prompt, "--max-new-tokens", "16"))
    method, mcfg = pyreft_import.load_pyreft(folder, from_pretrained(str(stories260k / "stories260K.bin")), "f1+l1")
    expected = _expected_text(stories260k, method.eval(), mcfg, prompt, 16)
    assert capsys.readouterr().out == expected + "\n"
    assert expected != _expected_text(stories260k, None, mcfg, prompt, 16)  # the interventions change the text
    with pytest.raises(SystemExit) as e:
        cli.main(_load_args(stories260k, folder, "--prompt", prompt))
    assert e.value.code == ("error: a pyreft folder does not store positions: pass the --positions it was trained "
                            "with (e.g. --positions f1+l1)")


def test_act_fn_is_saved_and_reloaded(stories260k, tmp_path, capsys):
    """--act-fn relu reaches the method (and reft.pt); --load generates with it: the CLI's text equals model.generate
    with the reloaded method, and differs from the same weights with the default linear activation."""
    out = tmp_path / "run"
    cli.main(_args(stories260k, out, "--data", str(STEER_TRAIN), "--max-steps", "2", "--act-fn", "relu"))
    model = from_pretrained(str(stories260k / "stories260K.bin"))
    method, mcfg, blob = saving.load(str(out), model)
    assert blob["config"]["act_fn"] == "relu" and blob["train_config"]["act_fn"] == "relu"
    prompt = "Lily had a red ball."
    expected = _expected_text(stories260k, method.eval(), mcfg, prompt, 16)
    linear_cfg = reft.MethodConfig(**{**blob["config"], "act_fn": "linear"})
    linear = reft.build_method(linear_cfg, model)
    linear.load_state_dict(blob["state_dict"])
    assert expected != _expected_text(stories260k, linear.eval(), linear_cfg, prompt, 16)  # relu changes the text
    capsys.readouterr()
    cli.main(_load_args(stories260k, out, "--prompt", prompt, "--max-new-tokens", "16"))
    assert capsys.readouterr().out == expected + "\n"


def test_default_positions_depend_on_the_task():
    """--positions "" = f3+l3 for language modelling, f3 (the paper's GLUE setting) for classification; a given
    --positions wins."""
    model = _tiny_llama()
    assert train.TrainConfig().positions == ""
    assert train.method_config(train.TrainConfig(), model).positions == "f3+l3"
    assert train.method_config(train.TrainConfig(), model, task="classify").positions == "f3"
    assert train.method_config(train.TrainConfig(positions="l2"), model, task="classify").positions == "l2"


def test_classify_defaults_to_first_token_positions(minilm_dir, tmp_path):
    cfg = train.TrainConfig(model=str(minilm_dir), data=str(SENT_TRAIN), eval_data=str(SENT_DEV), max_examples=16,
                            epochs=1, rank=1, out=str(tmp_path), device="cpu")
    classify.train_classifier(cfg)
    assert saving.load(str(tmp_path), from_pretrained(str(minilm_dir)))[1].positions == "f3"


@pytest.mark.parametrize("flags,message", [
    (["--positions", "f1+x"], "bad positions 'f1+x'"),
    (["--layers", "0,9"], "bad layers '0,9'"),
    (["--rank", "0"], "rank must be positive"),
    (["--method", "bitfit"], "unknown method 'bitfit'"),
    (["--act-fn", "swish"], "unknown act_fn 'swish': expected one of linear, relu, gelu, silu, tanh"),
    (["--data", "missing.jsonl"], "data file missing.jsonl does not exist"),
])
def test_bad_flags_give_one_line_errors(stories260k, tmp_path, flags, message):
    base = ["--data", str(STEER_TRAIN)] if "--data" not in flags else []
    r = _cli(*_args(stories260k, tmp_path, *base, *flags))
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_load_on_a_different_base_model_is_refused(stories260k, tmp_path):
    cfg = reft.MethodConfig(layers=[0], rank=2)
    model = from_pretrained(str(stories260k / "stories260K.bin"))
    saving.save(str(tmp_path), reft.build_method(cfg, model), cfg, model)
    other = from_pretrained(str(stories260k / "stories260K.bin"))
    with torch.no_grad():
        other.embed_tokens.weight.mul_(1.1)
    with pytest.raises(ValueError, match="different base model"):
        saving.load(str(tmp_path), other)
    r = _cli("--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
             "--load", str(tmp_path / "nothing"), "--prompt", "hi")
    assert r.returncode != 0 and "no such folder" in r.stderr and "Traceback" not in r.stderr


def test_defaults_fill_only_the_settings_left_unset():
    """support/defaults.py: --lr 0, --schedule auto and an unset --warmup take the kind's and method's recipe (DiReFT
    on classification: no warm-up); anything the user gives wins; a method outside the table takes FALLBACK."""
    from dataclasses import replace
    from support import defaults
    cfg = train.TrainConfig(method="direft")
    assert cfg.warmup < 0 and cfg.lr == 0 and cfg.schedule == "auto"
    got = defaults.resolve(cfg, "classify")
    assert (got.lr, got.schedule, got.warmup) == defaults.DEFAULTS[("classify", "direft")] == (1e-2, "linear", 0.0)
    got = defaults.resolve(cfg, "lm")
    assert (got.lr, got.schedule, got.warmup) == (1e-2, "constant", 0.1)
    mine = defaults.resolve(replace(cfg, lr=1e-3, schedule="cosine", warmup=0.25), "classify")
    assert (mine.lr, mine.schedule, mine.warmup) == (1e-3, "cosine", 0.25)
    none = defaults.resolve(replace(cfg, method="none"), "classify")
    assert (none.lr, none.schedule, none.warmup) == defaults.FALLBACK
    assert all(w in (0.0, 0.1) and s in ("linear", "constant", "cosine") for _, s, w in defaults.DEFAULTS.values())
