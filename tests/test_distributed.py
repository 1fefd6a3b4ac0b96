"""torchrun data parallelism on the CPU (gloo): 2 processes end with the weights of 1 process on the same global
batches, and each process trains on half of every batch. (NCCL on GPUs is the same code with another backend; it
cannot run on these machines.)"""
import os
import re
import subprocess
import sys

import torch

from conftest import REPO

ARGS = ["--model", "stories260K", "--data", str(REPO / "examples" / "steer_train.jsonl"), "--layers", "0,4",
        "--epochs", "1", "--batch-size", "8", "--grad-accum", "2", "--eval-fraction", "0.1", "--max-new-tokens", "4",
        "--device", "cpu"]


def run(cmd, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*cmd, str(REPO / "train.py"), *ARGS, "--out", str(out)], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_two_gloo_processes_equal_one(tmp_path):
    one = run([sys.executable], tmp_path / "one")
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], tmp_path / "two")
    a = torch.load(tmp_path / "one" / "reft.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "reft.pt", weights_only=True)["state_dict"]
    assert set(a) == set(b)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-4, diff
    m = re.search(r"training examples per process: \[(\d+), (\d+)\]", two.stderr)
    assert m, two.stderr[-2000:]
    n_train = 270  # 300 records, 10 % held out
    assert int(m.group(1)) + int(m.group(2)) == n_train and abs(int(m.group(1)) - int(m.group(2))) <= 2
    assert two.stdout.count('"exact_match"') == 1 and two.stderr.count("trainable params") == 1  # process 0 alone
    assert "data parallel" not in one.stderr
    progress = [line for line in two.stderr.splitlines() if line.startswith("epoch")]
    assert progress and len(progress) == len([line for line in one.stderr.splitlines() if line.startswith("epoch")])
