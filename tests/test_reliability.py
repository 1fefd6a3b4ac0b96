"""Nothing a user saved is lost, no run hangs, and every bad input gets one line (README, "Reliability").

- one run per --out at a time; classification obeys --out/--overwrite; --resume continues the saved run exactly
  (flags not given take the saved values; another setting or a changed data file is refused);
- atomic files (a killed save leaves the previous checkpoint, its temporary file is removed at the next start);
- SIGTERM as Ctrl-C (exit 143 / 130), a NaN loss stops the run with the last good checkpoint kept, strict JSON;
- torchrun: a stuck process (SIGSTOP) becomes an error on the others within --dist-timeout; SIGTERM on any process
  leaves a checkpoint;
- a seeded fuzz test: over 200 malformed data files, one training step each: zero tracebacks, zero hangs.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

import train
from conftest import REPO, run_train_cli
from support import files, runs
from support.untrusted import load_torch, time_limit
from support import cli
from support.checkpoints import from_pretrained

STEER = str(REPO / "examples" / "steer_train.jsonl")
SENT = REPO / "examples" / "sentiment_train.jsonl"


def quick(out, *extra):
    return ["--model", "stories260K", "--data", STEER, "--eval-fraction", "0", "--layers", "0", "--out", str(out),
            *extra]


def one_line_error(argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


def popen_train(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(proc, pattern: str, timeout: float = 120) -> list[str]:
    """stderr lines of proc up to the first that matches pattern."""
    lines, end = [], time.time() + timeout
    while time.time() < end:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    proc.kill()
    pytest.fail(f"no line matching {pattern!r}: {''.join(lines)[-2000:]}")


# -----------------------------------------------------------------------------------------------------------------
# 1-2. One run per --out; classification obeys --out and --overwrite


def test_two_concurrent_runs_into_one_out(tmp_path):
    first = popen_train(*quick(tmp_path, "--epochs", "50"))
    wait_for(first, r"trainable params")
    second = run_train_cli(*quick(tmp_path, "--epochs", "1"))
    first.send_signal(signal.SIGINT)
    rest = first.communicate(timeout=120)[1]
    assert second.returncode == 1
    assert re.search(rf"error: {re.escape(str(tmp_path))} is in use by process {first.pid} on .*: wait for that run "
                     "to end, or pass another --out", second.stderr), second.stderr
    assert first.returncode == 130 and "saving a checkpoint" in rest
    assert load_torch(str(tmp_path / "reft.pt"))["steps_done"] > 0  # the first run's result, whole


def test_classification_obeys_out_and_overwrite(minilm_dir, tmp_path):
    cli.main(quick(tmp_path, "--max-steps", "2"))
    before = (tmp_path / "reft.pt").read_bytes()
    cls = ["--model", str(minilm_dir), "--data", str(SENT), "--max-examples", "24", "--epochs", "1",
           "--batch-size", "8", "--out", str(tmp_path)]
    assert "already holds a loreft run" in one_line_error(cls)
    assert (tmp_path / "reft.pt").read_bytes() == before and (tmp_path / "checkpoint.pt").exists()
    cli.main(cls + ["--overwrite"])
    assert "head" in load_torch(str(tmp_path / "reft.pt"))


def test_classification_resumes_through_the_one_loop(minilm_dir, tmp_path, capsys):
    """Stopped after 3 steps and resumed: the same best epoch, head and method as an uninterrupted run."""
    cls = ["--model", str(minilm_dir), "--data", str(SENT), "--max-examples", "40", "--epochs", "2",
           "--batch-size", "8", "--dropout", "0.1"]
    cli.main(cls + ["--out", str(tmp_path / "straight")])
    cli.main(cls + ["--out", str(tmp_path / "cut"), "--max-steps", "3"])
    assert "stopped after 3 steps" in capsys.readouterr().err
    cli.main(["--model", str(minilm_dir), "--data", str(SENT), "--out", str(tmp_path / "cut"), "--resume"])
    err = capsys.readouterr().err
    assert "resumed from" in err and re.search(r"epoch 2/2 step \d+/\d+ \| loss", err)  # progress within an epoch
    a, b = (load_torch(str(tmp_path / d / "reft.pt")) for d in ("straight", "cut"))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])


def test_predictions_are_not_overwritten_without_overwrite(minilm_dir, tmp_path, capsys):
    run = tmp_path / "run"
    cli.main(["--model", str(minilm_dir), "--data", str(SENT), "--max-examples", "24", "--epochs", "1",
                "--batch-size", "8", "--out", str(run)])
    load = ["--model", str(minilm_dir), "--load", str(run), "--eval-data", str(REPO / "examples" / "sentiment_dev.jsonl"),
            "--max-examples", "8"]
    cli.main(load)
    mine = run / "predictions_sentiment_dev.jsonl"
    mine.write_text("my notes\n")
    assert f"{mine} exists: pass --overwrite" in one_line_error(load)
    assert mine.read_text() == "my notes\n"
    cli.main(load + ["--overwrite"])
    assert mine.read_text().startswith("{")


# -----------------------------------------------------------------------------------------------------------------
# 3. --resume continues the saved run


def test_resume_refuses_a_changed_data_file(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(open(STEER).readlines()[:40]))
    out = tmp_path / "run"
    cli.main(["--model", "stories260K", "--data", str(data), "--eval-fraction", "0", "--layers", "0",
                "--max-steps", "2", "--out", str(out)])
    saved = (out / "checkpoint.pt").read_bytes()
    data.write_text("".join(open(STEER).readlines()[:5]))
    msg = one_line_error(["--model", "stories260K", "--data", str(data), "--out", str(out), "--resume"])
    assert f"{data} changed since the run started" in msg
    assert (out / "checkpoint.pt").read_bytes() == saved


def test_resume_takes_saved_flags_and_refuses_other_ones(tmp_path, capsys):
    out = tmp_path / "run"
    cli.main(quick(out, "--max-steps", "2", "--lr", "0.005", "--batch-size", "4", "--epochs", "2"))
    saved = load_torch(str(out / "checkpoint.pt"))["train_config"]
    msg = one_line_error(quick(out, "--resume", "--lr", "0.02", "--batch-size", "8", "--template", "plain"))
    assert "--lr 0.005 there, 0.02 here" in msg and "--batch-size 4 there, 8 here" in msg
    assert "--template 'auto' there, 'plain' here" in msg
    # only --out and --resume (and a new --max-steps): every other setting is the saved one
    cli.main(["--model", "stories260K", "--data", STEER, "--out", str(out), "--resume", "--max-steps", "4"])
    ck = load_torch(str(out / "checkpoint.pt"))
    assert ck["step"] == 4 and ck["train_config"] == saved  # the saved settings, never rewritten
    assert ck["opt"]["param_groups"][0]["lr"] != 0.01  # the run's lr schedule, not the default 1e-2
    assert load_torch(str(out / "reft.pt"))["train_config"] == saved


def test_load_of_a_stopped_run_says_how_far_it_got(tmp_path, capsys):
    cli.main(quick(tmp_path, "--max-steps", "3"))
    capsys.readouterr()
    cli.main(["--model", "stories260K", "--load", str(tmp_path), "--prompt", "Hi", "--max-new-tokens", "2"])
    assert re.search(r"note: .* trained 3 of \d+ steps \(it was stopped; continue it with --resume\)",
                     capsys.readouterr().err)


# -----------------------------------------------------------------------------------------------------------------
# 4-6. Atomic files, signals, non-finite loss


def test_sigterm_saves_and_exits_143_and_resume_continues(tmp_path):
    proc = popen_train(*quick(tmp_path, "--epochs", "50"))
    wait_for(proc, r"step \d+/")
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "SIGTERM: finishing this step and saving a checkpoint" in err and "Traceback" not in err
    step = int(re.search(r"stopped after (\d+) steps \(SIGTERM\)", err).group(1))
    assert load_torch(str(tmp_path / "checkpoint.pt"))["step"] == step
    r = run_train_cli(*quick(tmp_path, "--resume", "--max-steps", str(step + 1)))
    assert r.returncode == 0 and f"resumed from {tmp_path}/checkpoint.pt at step {step}" in r.stderr


def test_sigkill_during_saves_keeps_a_loadable_checkpoint(tmp_path):
    """Killed at some moment while saving every step: the checkpoint is the previous one or the new one, whole; the
    killed save's temporary file is removed by the next run, which resumes."""
    proc = popen_train(*quick(tmp_path, "--epochs", "50", "--save-every", "1"))
    wait_for(proc, r"step 20/")
    proc.kill()
    proc.communicate(timeout=60)
    ck = load_torch(str(tmp_path / "checkpoint.pt"))
    assert ck["step"] >= 19
    stale = tmp_path / f"{files.TMP_PREFIX}checkpoint.pt.12345.abc"
    stale.write_bytes(b"half a file")
    r = run_train_cli(*quick(tmp_path, "--resume", "--max-steps", str(ck["step"] + 1)))
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and not list(tmp_path.glob(f"{files.TMP_PREFIX}*"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cli.main(quick(tmp_path, "--max-steps", "2"))
    good = (tmp_path / "checkpoint.pt").read_bytes()
    real = train.lm_loss
    monkeypatch.setattr(train, "lm_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    msg = one_line_error(quick(tmp_path, "--resume", "--max-steps", "4"))
    assert "step 3: the loss is nan (not finite): stopped before updating the weights" in msg
    assert "keeps the last good state" in msg
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_metrics_lines_are_strict_json():
    line = runs.metrics_line({"eval_loss": float("nan"), "exact_match": 0.5, "inf": float("inf"), "n": 3})
    assert json.loads(line) == {"eval_loss": None, "exact_match": 0.5, "inf": None, "n": 3}
    assert "NaN" not in line and "Infinity" not in line


# -----------------------------------------------------------------------------------------------------------------
# 7. torchrun never hangs


def _worker_pids(torchrun_pid: int) -> dict:
    """{LOCAL_RANK: pid} of torchrun's worker processes."""
    out = {}
    for pid in map(int, subprocess.run(["pgrep", "-P", str(torchrun_pid)], capture_output=True, text=True).stdout.split()):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((e.split(b"=", 1)[1] for e in env if e.startswith(b"LOCAL_RANK=")), None)
        if rank is not None:
            out[int(rank)] = pid
    return out


def _torchrun(tmp_path, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(REPO / "train.py"), *quick(tmp_path, "--epochs", "200", "--device", "cpu", *extra)],
                            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_torchrun_stuck_process_is_an_error_not_a_hang(tmp_path):
    t0 = time.time()
    proc = _torchrun(tmp_path, "--dist-timeout", "4")
    wait_for(proc, r"step \d+/")
    workers = _worker_pids(proc.pid)
    os.kill(workers[1], signal.SIGSTOP)  # alive, but never answers
    lines = wait_for(proc, r"error: torchrun process 0: no answer from the other processes within --dist-timeout 4s",
                     timeout=40)
    os.kill(workers[1], signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and not any("Traceback" in line for line in lines[-3:])
    assert time.time() - t0 < 60


def test_torchrun_sigterm_on_any_process_leaves_a_checkpoint(tmp_path):
    proc = _torchrun(tmp_path)
    wait_for(proc, r"step \d+/")
    os.kill(_worker_pids(proc.pid)[1], signal.SIGTERM)  # not process 0, which saves
    err = proc.communicate(timeout=120)[1]
    m = re.search(r"stopped after (\d+) steps \((SIGTERM)\)", err)
    assert m, err[-2000:]
    assert load_torch(str(tmp_path / "checkpoint.pt"))["step"] == int(m.group(1))


# -----------------------------------------------------------------------------------------------------------------
# 8. Every bad data input is one line: a seeded fuzz test


def lm_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    good = open(STEER, encoding="utf-8").read().splitlines()[:6]
    line = lambda: rng.choice(good)
    rec = lambda **kv: json.dumps(kv, ensure_ascii=rng.random() < 0.5)
    cases = []
    for _ in range(40):  # random bytes, some with a valid line in front
        junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 64, 700])))
        cases.append(("jsonl", (line() + "\n").encode() * rng.randrange(2) + junk))
    for _ in range(25):  # invalid UTF-8 inside otherwise good records
        b = bytearray((line() + "\n" + line()).encode())
        b[rng.randrange(len(b))] = rng.choice([0x80, 0xC3, 0xFF, 0xED])
        cases.append(("jsonl", bytes(b)))
    for n in (10 ** 4, 10 ** 5, 3 * 10 ** 5):  # huge lines: valid records, invalid JSON, one unbroken string
        cases.append(("jsonl", rec(prompt="a" * n, response="b").encode()))
        cases.append(("jsonl", rec(prompt="Tom had a cat.", response=" cat" * (n // 4)).encode()))
        cases.append(("jsonl", ("{" + '"' * n).encode()))
    for depth in (100, 1000, 10 ** 5):  # deep JSON
        cases.append(("jsonl", ('{"prompt": ' + "[" * depth + "]" * depth + ', "response": "x"}').encode()))
        cases.append(("json", ("[" * depth + "]" * depth).encode()))
    wrong = [1, 2.5, None, True, [], ["x"], {"a": 1}, "", "   ", float("nan")]
    for v in wrong:  # wrong types in every field
        for key in ("prompt", "response", "instruction", "output", "input"):
            other = {"prompt": "response", "response": "prompt", "instruction": "output", "output": "instruction",
                     "input": "instruction"}[key]
            r = {key: v, other: "fine"} | ({"output": "x"} if key == "input" else {})
            cases.append(("jsonl", json.dumps(r).encode()))
    for top in ("1", '"text"', "null", "[1, 2]", '{"prompt": "a"}', "[]", "{}", "true"):
        cases.append((rng.choice(["json", "jsonl"]), top.encode()))
    for s in ("\\ud800", "\\udfff", "a\\ud83d", "\\udc00b"):  # lone surrogates, as JSON escapes
        cases.append(("jsonl", f'{{"prompt": "x{s}", "response": "y"}}'.encode()))
        cases.append(("jsonl", f'{{"prompt": "x", "response": "{s}"}}'.encode()))
    for tok in ("<s>", "</s>", "<unk>", "<|eot_id|>", "[CLS]", "<pad>", "\x00", "\u2028", "\ufeff"):  # special text
        cases.append(("jsonl", (line() + "\n" + rec(prompt=f"Tom {tok} had", response=f"a {tok}")).encode()))
    cases += [("jsonl", b"\xef\xbb\xbf" + "\n".join(good).encode()),  # BOM
              ("jsonl", "\r\n".join(good).encode() + b"\r\n"),  # CRLF
              ("json", b"\xef\xbb\xbf" + json.dumps([json.loads(g) for g in good]).encode()),
              ("jsonl", b""), ("jsonl", b"\n\n  \n"), ("json", b""), ("jsonl", b"\x00" * 100),
              ("jsonl", "\n".join(good).encode()[:-5]),  # cut in the middle of a record
              ("jsonl", (line() + "\n") .encode() * 3 + b'{"prompt": NaN, "response": Infinity}'),
              ("jsonl", b'{"prompt": "a", "prompt": 5, "response": "b"}')]
    while len(cases) < 200:  # random edits of good files
        b = bytearray("\n".join(rng.sample(good, 3)).encode())
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(b))
            b[i:i + 1] = rng.choice([b"", b"\x00", b'"', b"{", b"\\", bytes([rng.randrange(256)])])
        cases.append(("jsonl", bytes(b)))
    return cases


def classify_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    good = SENT.read_text(encoding="utf-8").splitlines()[:8]
    cases = []
    for label in ("[1]", "true", "null", "1.5", '{"a": 1}', '""'):
        cases.append(("jsonl", "\n".join(good + [f'{{"text": "fine", "label": {label}}}']).encode()))
    for score in ('"nan"', "true", '"abc"', "[0.5]", '"inf"', "1e400"):
        cases.append(("jsonl", f'{{"text": "a", "score": 0.5}}\n{{"text": "b", "score": {score}}}'.encode()))
    for text in ("5", "{}", "[]", "null", '"\\ud800"'):
        cases.append(("jsonl", "\n".join(good + [f'{{"text": {text}, "label": "positive"}}']).encode()))
        cases.append(("jsonl", f'{{"text": "a", "text_pair": {text}, "label": "x"}}\n'
                               f'{{"text": "b", "text_pair": "c", "label": "y"}}'.encode()))
    cases.append(("jsonl", "\n".join(json.dumps({"text": f"t{i}", "label": "same"}) for i in range(8)).encode()))
    cases.append(("csv", b"text,label\n" + b'"' + b"a" * 200_000 + b'",positive\nb,negative\n'))  # over the csv limit
    cases.append(("tsv", b"sentence\tlabel\n" + b"x\x00y\t1\nz\t0\n"))
    cases.append(("csv", b"\xef\xbb\xbftext,label\na,positive\nb,negative\nc,positive\nd,negative\n"))  # BOM: trains
    cases.append(("csv", b"text,label\r\na,positive\r\nb,negative\r\nc,positive\r\nd,negative\r\n"))  # CRLF: trains
    for _ in range(12):
        cases.append((rng.choice(["csv", "tsv"]), bytes(rng.randrange(256) for _ in range(rng.choice([5, 80, 400])))))
    return cases


def test_fuzz_malformed_data_files_get_one_line(tmp_path, tiny_bert, capsys):
    """At least 200 malformed data files, one training step each (stories260K; classification on a tiny BERT): each
    ends trained or with one `error: ...` line, never a traceback or a hang."""
    rng = random.Random(20261203)
    cases = [("lm", *c) for c in lm_cases(rng)] + [("cls", *c) for c in classify_cases(rng)]
    assert len(cases) >= 200
    outcomes, t0 = Counter(), time.time()
    for i, (kind, ext, content) in enumerate(cases):
        path = tmp_path / f"case{i}.{ext}"
        path.write_bytes(content)
        model = ["--model", "stories260K"] if kind == "lm" else ["--model", str(tiny_bert), "--batch-size", "2"]
        argv = [*model, "--data", str(path), "--eval-fraction", "0.5" if kind == "cls" else "0", "--layers", "0",
                "--max-steps", "1", "--epochs", "1", "--max-length", "64", "--out", str(tmp_path / f"out{i}")]
        try:
            with time_limit(30, f"case {i}"):
                cli.main(argv)
            outcomes["trained"] += 1
        except SystemExit as e:
            msg = str(e.code)
            assert msg.startswith("error: ") and "\n" not in msg and "Traceback" not in msg, (i, msg)
            outcomes["one-line error"] += 1
        except ValueError as e:  # time_limit's: a hang
            pytest.fail(f"case {i} ({kind}, {ext}, {content[:80]!r}): {e}")
        except BaseException as e:  # noqa: BLE001: anything else is a traceback a user would see
            pytest.fail(f"case {i} ({kind}, {ext}, {content[:80]!r}): {type(e).__name__}: {e}")
    capsys.readouterr()
    with capsys.disabled():
        print(f"\nfuzz: {len(cases)} malformed data files in {time.time() - t0:.0f}s: {dict(outcomes)}, "
              "0 tracebacks, 0 hangs")
    assert outcomes["one-line error"] > 150 and outcomes["trained"] > 0


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_dir):
    """A tiny random BERT (hidden 16, 1 layer) with MiniLM's WordPiece vocabulary: classification in milliseconds."""
    import shutil
    from safetensors.torch import save_file
    import model as M
    folder = tmp_path_factory.mktemp("tiny_bert")
    cfg = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 128, "type_vocab_size": 2,
           "layer_norm_eps": 1e-12, "pad_token_id": 0, "hidden_act": "gelu"}
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    enc = M.Encoder(M.EncoderConfig(**{k: v for k, v in cfg.items()}))
    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    from support.checkpoints import ENCODER_RENAMES  # noqa: F401 (the loader maps these names back)
    save_file(_to_hf_names(state), str(folder / "model.safetensors"))
    shutil.copy(minilm_dir / "vocab.txt", folder / "vocab.txt")
    from_pretrained(str(folder))  # loads
    return folder


def _to_hf_names(state: dict) -> dict:
    """Our encoder names -> BERT's checkpoint names (the inverse of support/checkpoints.ENCODER_RENAMES)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^embed_norm\.", "embeddings.LayerNorm.", k)
        k = re.sub(r"^(word_embeddings|position_embeddings|token_type_embeddings)\.", r"embeddings.\1.", k)
        k = re.sub(r"^layers\.(\d+)\.attn_out\.", r"encoder.layer.\1.attention.output.dense.", k)
        k = re.sub(r"^layers\.(\d+)\.attn_norm\.", r"encoder.layer.\1.attention.output.LayerNorm.", k)
        k = re.sub(r"^layers\.(\d+)\.intermediate\.", r"encoder.layer.\1.intermediate.dense.", k)
        k = re.sub(r"^layers\.(\d+)\.output_norm\.", r"encoder.layer.\1.output.LayerNorm.", k)
        k = re.sub(r"^layers\.(\d+)\.output\.", r"encoder.layer.\1.output.dense.", k)
        k = re.sub(r"^layers\.(\d+)\.", r"encoder.layer.\1.attention.self.", k)
        k = re.sub(r"^pooler\.", "pooler.dense.", k)
        out[k] = v
    return out


def test_named_bad_inputs_are_one_line(tmp_path):
    r = run_train_cli("--model", "stories260K", "--data", STEER, "--lr", "abc")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: argument --lr: invalid float value: 'abc' (python train.py --help lists the flags)"]
    assert one_line_error(["--model", "stories260K", "--data", "/dev/zero", "--out", str(tmp_path / "z")]) == \
        "error: /dev/zero: not a regular file (data files are .jsonl, .json, .csv or .tsv text)"
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + open(STEER, "rb").read())
    cli.main(["--model", "stories260K", "--data", str(bom), "--max-steps", "1", "--out", str(tmp_path / "b")])


def test_a_collapsed_run_says_so_in_one_line(capsys):
    curve = [(i + 1, 0.6931 + 0.001 * (i % 3), 0.0) for i in range(40)]  # a classifier stuck at ln 2
    assert runs.collapse_note(curve) and "the training loss has not moved" in capsys.readouterr().err
    learning = [(i + 1, 1.0 / (i + 1), 0.0) for i in range(40)]
    assert not runs.collapse_note(learning) and capsys.readouterr().err == ""
    assert not runs.collapse_note(curve[:5])  # too few steps to tell
