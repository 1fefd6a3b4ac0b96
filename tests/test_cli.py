"""The command lines as a newcomer meets them: the README's two commands are CI's, --help documents every flag,
Ctrl-C saves and resumes exactly, --out is never overwritten by accident, and bad input names the real problem."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

import train
from conftest import REPO, run_train_cli
from support import cli

STORIES = REPO / "assets" / "stories260K"
STEER = ["--data", str(REPO / "examples" / "steer_train.jsonl"), "--eval-data", str(REPO / "examples" / "steer_eval.jsonl")]


def test_readme_commands_are_the_ones_ci_and_setup_run():
    readme = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", readme, re.S))
    assert re.search(r"^bash setup\.sh quickstart\b", blocks, re.M) and re.search(r"^bash setup\.sh test\b", blocks, re.M)
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["bash setup.sh test"], ci  # CI runs exactly the README's test command
    setup = (REPO / "setup.sh").read_text()
    assert "python -m pytest -q -rs tests" in setup and "python train.py\n" in setup
    assert ". .venv/bin/activate" in setup  # setup ends by saying how to reach the environment
    assert "-r requirements-test.txt" in setup and "--no-deps -r requirements-pyreft.txt" in setup
    for name in ("requirements-test.txt", "requirements-pyreft.txt"):  # every test reference pinned
        reqs = [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()]
        assert all("==" in r for r in reqs if r), (name, reqs)
    assert cli.QUICKSTART[cli.QUICKSTART.index("--model") + 1] == "stories260K"


def test_help_documents_every_flag_with_its_default():
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=60).stdout
    assert "examples/steer.jsonl" not in out and "TrainConfig below" not in out  # the old help: a missing file
    assert "examples/steer_train.jsonl" in out
    from dataclasses import fields
    for f in fields(train.TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        m = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  --|\Z)", out, re.M | re.S)
        assert m, flag
        text = " ".join(m.group(0).split())
        assert len(text) > len(flag) + 15, f"{flag} has no help text"
        if f.type is not bool:
            assert "(default:" in text, f"{flag} does not show its default"


def _quick(out, *extra):
    return ["--model", "stories260K", *STEER, "--out", str(out), "--layers", "0,4", "--epochs", "2", *extra]


def test_ctrl_c_saves_and_resume_is_bit_identical(tmp_path):
    cli.main(_quick(tmp_path / "straight"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *_quick(tmp_path / "cut")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # Ctrl-C once training has started
        if " step 10/" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest  # stopped by Ctrl-C: the shell's code
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    m = re.search(r"stopped after (\d+) steps \(Ctrl-C\); continue with the same command and --resume", rest)
    assert m and 10 <= int(m.group(1)) < 76, rest  # stopped early: 2 epochs = 76 steps
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    cli.main(_quick(tmp_path / "cut", "--resume"))
    a = torch.load(tmp_path / "straight" / "reft.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "reft.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_out_holding_another_run_is_refused(tmp_path):
    cli.main(_quick(tmp_path, "--max-steps", "2"))
    r = run_train_cli(*_quick(tmp_path, "--method", "direft", "--max-steps", "2"))
    assert r.returncode == 1 and "already holds a loreft run (rank 8)" in r.stderr and "--overwrite" in r.stderr
    r = run_train_cli(*_quick(tmp_path, "--rank", "4", "--resume"))
    assert r.returncode == 1 and "another run (--rank 8 there, 4 here)" in r.stderr and "Traceback" not in r.stderr
    r = run_train_cli(*_quick(tmp_path, "--method", "direft", "--max-steps", "2", "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "reft.pt", weights_only=True)["config"]["method"] == "direft"


def test_bad_inputs_name_the_real_problem(tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("prompt,response\nhello,world\n")
    r = run_train_cli("--model", "stories260K", "--data", str(csv_path), "--out", str(tmp_path / "a"))
    assert r.returncode == 1 and "--task classify" not in r.stderr.splitlines()[-1]
    assert "is a decoder" in r.stderr and "prompt and response" in r.stderr
    r = run_train_cli("--model", str(REPO / "README.md"), *STEER, "--out", str(tmp_path / "b"))
    assert r.returncode == 1 and "is not a checkpoint" in r.stderr and "llama2.c export" not in r.stderr.split("expected")[0]
    r = run_train_cli("--model", "stories260K", *STEER, "--positions", "f3l3", "--out", str(tmp_path / "c"))
    assert r.returncode == 1 and "the + is required" in r.stderr


def test_max_length_caps_generation(tmp_path):
    cli.main(_quick(tmp_path, "--max-steps", "2"))
    args = ["--model", "stories260K", "--load", str(tmp_path), "--prompt", "Lily had a red ball."]
    r = run_train_cli(*args, "--max-new-tokens", "40", "--max-length", "14")
    assert r.returncode == 0, r.stderr
    assert "5 new tokens, not 40" in r.stderr  # the prompt is 9 tokens
    r = run_train_cli(*args, "--max-length", "5")
    assert r.returncode == 1 and "leaves no room within --max-length 5" in r.stderr


def test_no_arguments_runs_the_quick_start(monkeypatch, capsys, tmp_path):
    seen = {}
    monkeypatch.setattr(train, "train", lambda cfg: seen.setdefault("cfg", cfg) and {})
    monkeypatch.chdir(REPO)
    cli.main([])
    cfg = seen["cfg"]
    assert (cfg.model, cfg.method, cfg.out) == ("stories260K", "loreft", "runs/steer") and cfg.eval_data
    assert "the quick start" in capsys.readouterr().err


def test_quick_start_flags_and_rerun(monkeypatch, tmp_path, capsys):
    """Without --data or --load: the quick start with the flags given on top; --out runs/steer_<method> for
    methods other than LoReFT; the same quick start again replaces its own run, another run there stays."""
    seen = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(train, "train", lambda cfg: seen.append(cfg) and {})
    cli.main(["--method", "direft", "--rank", "2"])
    assert (seen[-1].out, seen[-1].method, seen[-1].rank, seen[-1].model) == ("runs/steer_direft", "direft", 2,
                                                                              "stories260K")
    monkeypatch.undo()
    out = str(tmp_path / "q")
    cli.main(["--epochs", "1", "--out", out, "--layers", "0"])
    cli.main(["--epochs", "1", "--out", out, "--layers", "0"])  # the same quick start: replaced, no error
    with pytest.raises(SystemExit, match="already holds a loreft run"):
        cli.main(["--epochs", "2", "--out", out, "--layers", "0"])  # other settings: protected


def test_max_grad_norm_zero_turns_clipping_off(tmp_path):
    """--max-grad-norm 0 trains (clipping off, as transformers), it does not clip every gradient to 0."""
    args = ["--model", "stories260K", "--data", str(REPO / "examples" / "steer_train.jsonl"), "--layers", "0",
            "--max-steps", "3", "--eval-fraction", "0"]
    cli.main(args + ["--max-grad-norm", "0", "--out", str(tmp_path / "off")])
    cli.main(args + ["--max-grad-norm", "1e-12", "--out", str(tmp_path / "tiny")])
    off, tiny = (torch.load(tmp_path / d / "reft.pt", weights_only=True)["state_dict"] for d in ("off", "tiny"))
    init = {k: v for k, v in tiny.items()}
    assert any(not torch.allclose(off[k], init[k]) for k in off)  # clipping off: the weights moved
