"""Every shell command in README.md, WALKTHROUGH.md, teach/README.md and docs/reference.md works as printed, in the
order printed, in a fresh copy of the repository (python = this test environment's interpreter, as after
`. .venv/bin/activate`).

A command runs verbatim when it takes under a minute; a longer one runs with the overrides listed in OVERRIDES (the
same command, made smaller). A few cannot run here, each listed in NOT_HERE with the reason (a GPU, the network, data
that is not in the repository, or the test suite itself). Usage lines with placeholders (CKPT, FILE, [--flag] ...)
are templates, not commands. A documented command that is none of these fails this test until it is listed.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

DOCS = ["README.md", "WALKTHROUGH.md", "teach/README.md", "docs/reference.md"]
PLACEHOLDER = re.compile(r"\b(CKPT|FILE|DIR|RUN|MODEL_DIR|FOLDER|SUBMISSION|TEXT|M)\b|\\\||\[--|\[DIR\]|\.\.\.$| N\b|F\]")

# substring of a command -> why it does not run here
NOT_HERE = {
    "bash setup.sh": "builds .venv and runs the quick start or this whole suite: CI runs `bash setup.sh test` itself",
    "pip install": "installs packages from the package index (setup.sh does it)",
    "python -m pytest": "the test suite itself",
    "HF_TOKEN": "a gated Hub repo: needs the network and an account",
    "meta-llama/": "downloads Llama 3.2 from the Hub (network) and wants a GPU",
    "FacebookAI/roberta-base": "downloads roberta-base from the Hub (network)",
    "torchrun --nproc_per_node 4": "4 GPUs (tests/test_distributed.py runs 2 gloo processes on the CPU)",
    "runs/sst2": "needs GLUE's SST-2 (outside data; examples/make_sst2.py says where to get it)",
    "make_sst2.py": "needs GLUE's SST-2 (outside data): without it, one line says what to download",
    "runs/compare_sst2": "needs GLUE's SST-2 (outside data)",
    "/autograder/": "paths of the Gradescope machine (tests/test_assignment.py grades with --gradescope)",
    "assignment.py expected": "regenerates teach/expected/ (about a minute; tests/test_assignment.py checks the stored "
                              "values against a fresh reference run)",
    "--preset tiny --device cpu --threads 1 --repeats 7": "the benchmark (7 min); tests/test_bench.py runs it small",
}
# substring of a command -> extra flags (appended) that make a long command short; the flags it shows still apply
OVERRIDES = {
    "--out runs/compare_quickstart": ["--epochs", "1", "--seeds", "1"],
    "benchmarks/e2e.py --threads 1 --repeats 2": ["--epochs", "1", "--max-examples", "16"],
    "python benchmarks/generalize.py": ["--seeds", "0", "--sides", "ours", "--epochs", "1"],
    "--out runs/sentiment": ["--max-examples", "64", "--epochs", "1"],
}


def documented_commands() -> list[tuple[str, str]]:
    """(doc, command) in document order: lines of ```bash blocks (backslash continuations joined, comments cut) and
    inline `python ...` / `bash ...` / `torchrun ...` / `pip ...` spans."""
    out = []
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        spans = []
        for m in re.finditer(r"```(?:bash|sh)\n(.*?)```", text, re.S):
            body, loop = m.group(1).replace("\\\n", " "), []
            for line in body.splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if not line or line.startswith("#"):
                    continue
                if loop or line.endswith("; do"):  # a for loop over several lines is one command
                    loop.append(line)
                    if not line.endswith("done"):
                        continue
                    line, loop = " ".join(loop), []
                spans.append((m.start(), len(spans), line))
        for m in re.finditer(r"`((?:python|bash|torchrun|pip) [^`\n]+)`", text):
            if not any(a <= m.start() < b for a, b in code_blocks(text)):
                spans.append((m.start(), len(spans), m.group(1).strip()))
        out += [(doc, cmd) for _, _, cmd in sorted(spans)]
    return out


def code_blocks(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"```.*?```", text, re.S)]


def plan(commands):
    """(kind, command, reason or flags) for each distinct command: run, template or not_here."""
    seen, out = set(), []
    for doc, cmd in commands:
        if cmd in seen:
            continue
        seen.add(cmd)
        reason = next((why for key, why in NOT_HERE.items() if key in cmd), None)
        if reason:
            out.append(("not_here", cmd, reason))
        elif PLACEHOLDER.search(cmd):
            out.append(("template", cmd, "a usage line with placeholders"))
        else:
            extra = next((flags for key, flags in OVERRIDES.items() if key in cmd), [])
            out.append(("run", cmd, extra))
    return out


def test_every_documented_command_is_known():
    kinds = {kind for kind, _, _ in plan(documented_commands())}
    assert "run" in kinds and len(documented_commands()) > 30


def _fresh_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file() and not name.startswith(".venv/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_documented_commands_work_as_printed(tmp_path):
    """Each runnable command, in order, in one fresh copy (a later command may use an earlier one's output, as a
    reader's would): exit 0 and no traceback. Prints the table of every command with its result and time."""
    repo = _fresh_copy(tmp_path / "repo")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "REFT_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("REFT_SHARED_ASSETS", None)
    (home / "course" / "private_cases").mkdir(parents=True)  # the instructor's folders the teach commands name
    (home / "submissions").mkdir()
    (home / "submissions" / "alice").symlink_to(home / "course" / "a3")  # a student's copy, handed in untouched
    rows, failures = [], []
    for kind, cmd, extra in plan(documented_commands()):
        if kind != "run":
            rows.append((kind, cmd, extra, ""))
            continue
        shell = cmd.replace("~/", f"{home}/") + "".join(f" {x}" for x in extra)
        if "assignment.py make" in cmd:  # the docs show alternatives into one folder: a reader runs one of them
            shutil.rmtree(home / "course" / "a3", ignore_errors=True)
        shell = re.sub(r"^(MINILM=.*)$", r"export \1", shell)
        t0 = time.time()
        r = subprocess.run(["bash", "-c", f"set -e; . {tmp_path}/env.sh 2>/dev/null || true; {shell}"], cwd=repo,
                           env=env, capture_output=True, text=True, timeout=300)
        if shell.startswith("export "):  # a variable later commands use ($MINILM)
            with open(tmp_path / "env.sh", "a") as f:
                f.write(shell + "\n")
        ok = r.returncode == 0 and "Traceback" not in r.stderr
        rows.append(("ok" if ok else "FAILED", cmd, extra, f"{time.time() - t0:.0f}s"))
        if not ok:
            failures.append(f"{cmd}\n  exit {r.returncode}: {(r.stderr or r.stdout)[-800:]}")
    print("\n".join(f"{kind:9} {when:>5} {cmd}" + (f"  [+ {' '.join(x)}]" if isinstance(x, list) and x else
                                                   f"  ({x})" if isinstance(x, str) else "")
                    for kind, cmd, x, when in rows))
    assert not failures, "\n".join(failures)
