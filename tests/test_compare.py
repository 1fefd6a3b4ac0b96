"""support/compare.py: several methods in one command (train.py --method a,b --seeds N [--lr-grid ...]).

On a cut-down quick-start task (40 training records, 10 held out, one epoch) so that a comparison takes seconds:
the files and their fields, the table printed before the final JSON line, no leak between runs (a run inside a
comparison equals the same run alone), the lr grid, the classification floor (the head alone), the picture and its
absence without matplotlib, the refusals, and --resume after Ctrl-C."""
import builtins
import json
import os
import signal

import pytest
import torch

import train
from conftest import REPO
from support import compare, defaults
from support import cli

STEER_TRAIN, STEER_EVAL = REPO / "examples" / "steer_train.jsonl", REPO / "examples" / "steer_eval.jsonl"


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("steer_small")
    (folder / "train.jsonl").write_text("".join(STEER_TRAIN.read_text().splitlines(True)[:40]))
    (folder / "eval.jsonl").write_text("".join(STEER_EVAL.read_text().splitlines(True)[:10]))
    return folder


def args(stories260k, small_task, out, *extra):
    return ["--model", str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
            "--data", str(small_task / "train.jsonl"), "--eval-data", str(small_task / "eval.jsonl"), "--epochs", "1",
            "--out", str(out), "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def two_methods(stories260k, small_task, tmp_path_factory):
    """none, lora and loreft x seeds 0 and 1, through train.main as the command line runs it."""
    out = tmp_path_factory.mktemp("cmp")
    capture = pytest.MonkeyPatch()
    lines = []
    capture.setattr("sys.stdout", type("W", (), {"write": lambda s, t: lines.append(t), "flush": lambda s: None})())
    try:
        cli.main(args(stories260k, small_task, out, "--method", "none,lora,loreft", "--seeds", "2"))
    finally:
        capture.undo()
    return out, "".join(lines)


def test_compare_writes_the_files_and_rows(two_methods):
    out, stdout = two_methods
    rows = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["none", "lora", "loreft"]
    for r in rows:
        for key in ("trainable_params", "trainable_pct", "lr", "train_s", "step_ms", "peak_mem_mb", "exact_match",
                    "eval_loss", "loss_curve", "seeds", "runs"):
            assert key in r, (r["method"], key)
        assert r["seeds"] == [0, 1] and len(r["exact_match"]["values"]) == 2
        assert r["exact_match"]["mean"] == pytest.approx(sum(r["exact_match"]["values"]) / 2)
    none, lora, loreft = rows
    assert none["trainable_params"] == 0 and none["exact_match"]["mean"] == 0 and none["loss_curve"] == []
    assert none["peak_mem_mb"] is None and none["step_ms"] is None  # nothing trains
    assert lora["trainable_params"] == 8960 and loreft["trainable_params"] == 10320  # 5 x (q: 8·64·2, v: 8·64 + 32·8)
    assert lora["lr"] == defaults.lr_of("lm", "lora") and loreft["lr"] == defaults.lr_of("lm", "loreft")
    for r in (lora, loreft):
        assert len(r["loss_curve"]) == 5 and r["loss_curve"][-1][1] < r["loss_curve"][0][1]  # 40 / 8 steps, learning
        assert r["train_s"] > 0 and r["step_ms"] > 0 and r["peak_mem_mb"] > 1.0  # the model alone is ~1 MiB
        assert r["eval_loss"]["mean"] < none["eval_loss"]["mean"]
        assert len({r["eval_loss"]["values"][0], r["eval_loss"]["values"][1]}) == 2  # two seeds, two runs
    assert (out / "lora" / "seed1" / "reft.pt").exists() and (out / "compare.png").stat().st_size > 10_000
    md = (out / "compare.md").read_text()
    assert md.splitlines()[0].startswith("| method | trainable params") and "| lora | 8,960 |" in md
    printed = stdout.strip().splitlines()
    assert md.strip() in stdout and json.loads(printed[-1]) == {
        r["method"]: {"exact_match": round(r["exact_match"]["mean"], 4), "eval_loss": round(r["eval_loss"]["mean"], 4)}
        for r in rows}  # the table, then the final JSON line, last


def test_a_run_in_a_comparison_equals_the_same_run_alone(two_methods, stories260k, small_task, tmp_path):
    """Nothing leaks from one run to the next: loreft seed 1, trained after none and lora, equals loreft seed 1 alone
    (weights and metrics)."""
    out, _ = two_methods
    alone = train.train(train.parse_args(args(stories260k, small_task, tmp_path, "--method", "loreft", "--seed", "1")))
    theirs = torch.load(out / "loreft" / "seed1" / "reft.pt", weights_only=True)["state_dict"]
    ours = torch.load(tmp_path / "reft.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    row = json.loads((out / "compare.json").read_text())[2]
    assert row["exact_match"]["values"][1] == alone["exact_match"]
    assert row["eval_loss"]["values"][1] == pytest.approx(alone["eval_loss"], abs=0)


def test_lr_grid_picks_the_best_on_the_eval_data(stories260k, small_task, tmp_path, capsys):
    cli.main(args(stories260k, small_task, tmp_path, "--method", "lora", "--lr-grid", "1e-3,3e-2", "--seeds", "1"))
    row = json.loads((tmp_path / "compare.json").read_text())[0]
    assert set(row["lr_grid"]) == {"0.001", "0.03"} and (tmp_path / "lora" / "lr0.001" / "seed0" / "reft.pt").exists()
    best = max(row["lr_grid"], key=row["lr_grid"].get)
    assert row["lr"] == float(best) and row["runs"] == [str(tmp_path / "lora" / f"lr{best}" / "seed0")]
    assert "* lr picked per method from 0.001, 0.03" in capsys.readouterr().out


def test_classification_floor_is_the_head_alone(minilm_dir, tmp_path, capsys):
    data = REPO / "examples"
    cli.main(["--model", str(minilm_dir), "--data", str(data / "sentiment_train.jsonl"), "--eval-data",
                str(data / "sentiment_dev.jsonl"), "--max-examples", "32", "--epochs", "1", "--batch-size", "16",
                "--rank", "2", "--method", "none,lora", "--seeds", "1", "--out", str(tmp_path), "--device", "cpu"])
    none, lora = json.loads((tmp_path / "compare.json").read_text())
    assert none["trainable_params"] == 0 and none["head_params"] == lora["head_params"] == 384 * 2 + 2  # BERT: out_proj
    assert none["peak_mem_mb"] > 80 and lora["trainable_params"] == 6 * 2 * (2 * 384 + 384 * 2)  # 6 layers, q and v
    assert "accuracy" in lora and "f1" in lora and lora["best_epoch"] == [1]
    out = capsys.readouterr().out
    assert "| none (head only) | 0 | 770 |" in out and "metrics: the best epoch on the eval data" in out


def test_without_matplotlib_one_line_and_no_picture(monkeypatch, tmp_path, capsys):
    real = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    rows = [{"method": "lora", "trainable_params": 10, "loss_curve": [[1, 2.0]],
             "exact_match": {"mean": 0.5, "std": 0.0, "values": [0.5]}}]
    assert compare.plot(rows, "exact_match", "lm", str(tmp_path / "compare.png")) is False
    assert not (tmp_path / "compare.png").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib is not installed" in err[0]


@pytest.mark.parametrize("extra,message", [
    (["--method", "loreft,bitfit"], "bad --method 'loreft,bitfit'"),
    (["--method", "lora,lora"], "bad --method 'lora,lora'"),
    (["--method", "loreft,lora", "--max-steps", "3"], "--max-steps is for one run"),
    (["--method", "loreft,lora", "--resume"], "--resume: no finished or stopped run of this comparison in"),
    (["--method", "lora", "--lr-grid", "1e-3,x"], "bad --lr-grid '1e-3,x'"),
    (["--method", "lora", "--lr-grid", "1e-3", "--lr", "0.01"], "--lr-grid takes positive learning rates, and replaces"),
])
def test_bad_comparisons_are_refused_before_training(stories260k, small_task, tmp_path, extra, message):
    with pytest.raises(SystemExit) as e:
        cli.main(args(stories260k, small_task, tmp_path, *extra))
    assert message in str(e.value) and str(e.value).startswith("error: ")
    assert not (tmp_path / "compare.json").exists()


def test_an_earlier_comparison_is_not_overwritten(two_methods, stories260k, small_task):
    out, _ = two_methods
    with pytest.raises(SystemExit, match="already holds a run: pass --overwrite"):
        cli.main(args(stories260k, small_task, out, "--method", "none,lora"))


def test_none_alone_evaluates_the_frozen_model(stories260k, small_task, tmp_path, capsys):
    """--method none alone evaluates the frozen model (the floor): one metrics line, nothing trained or written;
    in a comparison (--seeds 1 makes it one) it is the frozen model's row."""
    cli.main(args(stories260k, small_task, tmp_path / "alone", "--method", "none"))
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["exact_match"] == 0.0 and metrics["n"] > 0 and not (tmp_path / "alone" / "reft.pt").exists()
    cli.main(args(stories260k, small_task, tmp_path / "cmp", "--method", "none", "--seeds", "2"))
    (row,) = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert row["method"] == "none" and row["seeds"] == [0, 1] and row["exact_match"]["values"] == [0.0, 0.0]


def test_seeds_auto_and_zero(stories260k, small_task, tmp_path):
    from support.compare import seed_count
    assert (seed_count("auto", 1), seed_count("auto", 3), seed_count("2", 1)) == (1, 3, 2)
    with pytest.raises(SystemExit, match="--seeds 0: expected a number of runs per method"):
        cli.main(args(stories260k, small_task, tmp_path, "--method", "lora", "--seeds", "0"))


def test_a_stopped_comparison_continues_with_resume(two_methods, stories260k, small_task, tmp_path, monkeypatch,
                                                    capsys):
    """Ctrl-C during the second method: one line saying how to go on; --resume reuses the finished run, continues the
    stopped one from its checkpoint, and ends with what an uninterrupted comparison reports."""
    real, steps = train.lm_loss, []

    def ctrl_c_at_step_3(*a, **k):
        if torch.is_grad_enabled():  # a training step, not an evaluation
            steps.append(1)
            if len(steps) == 3:
                os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(train, "lm_loss", ctrl_c_at_step_3)
    cmd = args(stories260k, small_task, tmp_path, "--method", "none,loreft", "--seeds", "1")
    with pytest.raises(SystemExit) as e:
        cli.main(cmd)
    assert e.value.code == 130  # stopped by Ctrl-C, as the shell reports it
    assert "stopped during loreft, seed 0; continue it with the same command and --resume" in capsys.readouterr().err
    assert (tmp_path / "none/seed0/result.json").exists() and (tmp_path / "loreft/seed0/checkpoint.pt").exists()
    assert not (tmp_path / "loreft/seed0/result.json").exists() and not (tmp_path / "compare.json").exists()
    monkeypatch.setattr(train, "lm_loss", real)
    capsys.readouterr()
    with pytest.raises(SystemExit, match="trained with other settings \\(epochs 1 there, 2 here\\)"):
        cli.main(cmd + ["--epochs", "2", "--resume"])
    cli.main(cmd + ["--resume"])
    err = capsys.readouterr().err
    assert "== none, seed 0: finished in" in err and "reused (--resume)" in err
    assert "== loreft, seed 0: " in err and "(continued from its checkpoint)" in err
    rows = {r["method"]: r for r in json.loads((tmp_path / "compare.json").read_text())}
    whole = {r["method"]: r for r in json.loads((two_methods[0] / "compare.json").read_text())}
    for m in ("none", "loreft"):  # seed 0 of the uninterrupted comparison: the same run
        assert rows[m]["exact_match"]["values"] == whole[m]["exact_match"]["values"][:1]
        assert rows[m]["eval_loss"]["values"] == pytest.approx(whole[m]["eval_loss"]["values"][:1], abs=1e-6)
