"""Assignment mode: turn the core files into a programming assignment, and grade a student's work.

  python teach/assignment.py make DIR [--parts rmsnorm,rope,...]      a student copy of this repository in DIR
  python teach/assignment.py grade [DIR] [--extra-tests PATH] [--gradescope results.json] [--parts ...]

The solution regions live in the core files between `### BEGIN SOLUTION <part>` and `### END SOLUTION <part>` (a part
may have several regions, in several files). `make` replaces each chosen part's regions by
`raise NotImplementedError("<part>: see WALKTHROUGH.md §N")` and leaves the markers, so the student writes between
them. `grade` never runs DIR's own tests (a student can edit those): for each part it builds the reference core with
the student's regions of that part put back in, every other part the reference's, and runs this repository's tests
of that part (tests/parts/test_<part>.py) plus the instructor's private ones (--extra-tests: files test_<part>*.py,
or any file that sets PART = "<part>"). So a mistake in one part never costs points in another. The score is the mean
over parts of passed/total; the last stdout line is the JSON {"score": s, "parts": {...}}.
"""
import argparse
import ast
import importlib.util
import json
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = ["model.py", "reft.py", "data.py", "train.py"]
# part -> its section of WALKTHROUGH.md (the message a blanked region raises points there)
PARTS = {"rmsnorm": 2, "rope": 3, "attention": 4, "generate": 5, "lm_loss": 6, "positions": 7, "loreft": 8,
         "direft": 9, "prefix": 10, "pedro": 11, "lora": 12}
REFERENCES = ["transformers", "peft", "pyreft"]  # the independent references some part tests compare with
# files a student copy must not hold: they contain the solution, or plausible variants of it
NOT_FOR_STUDENTS = ["tests/test_assignment.py", "tests/fixtures/assignment"]
SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", "out"}
PART_TIMEOUT = 60  # seconds for one part's tests (an endless loop in a student's region costs that part only)
TOTAL_TIMEOUT = 540  # seconds for a whole grade: parts not reached by then score 0 (fits a 10-minute autograder)
RECORD = "teach/ASSIGNMENT.json"  # written by `make` into the copy: its parts and the code outside the regions
REGION = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION (?P<part>\w+)[ \t]*\n(?P<body>.*?)^[ \t]*### END SOLUTION "
                    r"(?P=part)[ \t]*$", re.S | re.M)
MD_REGION = re.compile(r"<!-- BEGIN SOLUTION (?P<part>\w+) -->\n(?P<body>.*?)<!-- END SOLUTION (?P=part) -->", re.S)


def regions(text: str, part: str) -> list[str]:
    """The bodies of `part`'s solution regions in a file's text, in order."""
    return [m.group("body") for m in REGION.finditer(text) if m.group("part") == part]


def replace_regions(text: str, part: str, bodies) -> str:
    """text with `part`'s region bodies replaced, in order, by `bodies` (a list, or a function of the indent)."""
    it = iter(bodies) if isinstance(bodies, list) else None

    def sub(m):
        if m.group("part") != part:
            return m.group(0)
        body = next(it) if it is not None else bodies(m.group("indent"))
        start, end = m.start("body") - m.start(), m.end("body") - m.start()
        return m.group(0)[:start] + body + m.group(0)[end:]
    return REGION.sub(sub, text)


def blank(text: str, part: str) -> str:
    return replace_regions(text, part, lambda indent: f'{indent}raise NotImplementedError("{part}: see '
                                                      f'WALKTHROUGH.md §{PARTS[part]}")\n')


def parse_parts(spec: str | None) -> list[str]:
    if not spec:
        return list(PARTS)
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"error: unknown part {bad[0]!r}: expected some of {', '.join(PARTS)}")
    return parts


# -----------------------------------------------------------------------------------------------------------------
# make


def skeleton(text: str) -> str:
    """A core file without its region bodies (markers kept): the code a student may not change."""
    return REGION.sub(lambda m: m.group(0)[:m.start("body") - m.start()] + m.group(0)[m.end("body") - m.start():],
                      text)


def tracked_files() -> list[Path]:
    """The repository's tracked files (git ls-files), so nothing untracked (an editor's model.py~ backup, a run
    folder) reaches a student copy; without git, every file but SKIP's."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return [REPO / n for n in names.splitlines() if (REPO / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in sorted(REPO.rglob("*")) if p.is_file() and not any(
            x in SKIP for x in p.relative_to(REPO).parts)]


def make(dest: Path, parts: list[str]):
    """A copy of this repository for students: the chosen parts blanked in the core files and in WALKTHROUGH.md, the
    parts and the code outside the regions recorded in teach/ASSIGNMENT.json (grade reads them)."""
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"error: {dest} exists and is not empty; choose a new folder")
    for path in tracked_files():
        rel = path.relative_to(REPO)
        if any(str(rel) == n or str(rel).startswith(n + "/") for n in NOT_FOR_STUDENTS + [RECORD]):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)
    for name in CORE:
        text = (dest / name).read_text()
        for part in parts:
            text = blank(text, part)
        (dest / name).write_text(text)
    walkthrough = dest / "WALKTHROUGH.md"
    if walkthrough.exists():
        walkthrough.write_text(MD_REGION.sub(
            lambda m: m.group(0) if m.group("part") not in parts else
            f"<!-- BEGIN SOLUTION {m.group('part')} -->\n*(the code of this step is yours to write: "
            f"`{m.group('part')}` in the assignment)*\n<!-- END SOLUTION {m.group('part')} -->",
            walkthrough.read_text()))
    (dest / RECORD).write_text(json.dumps({"parts": parts, "skeletons": {n: skeleton((REPO / n).read_text())
                                                                          for n in CORE}}, indent=1))
    n_regions = sum(len(regions((REPO / n).read_text(), p)) for n in CORE for p in parts)
    print(f"student copy in {dest}: parts {', '.join(parts)} blanked ({n_regions} regions)")
    print(f"a student checks their work with: cd {dest} && python teach/assignment.py grade .")
    print(f"the official grade: python {Path(__file__).relative_to(REPO)} grade SUBMISSION --parts {','.join(parts)}")


# -----------------------------------------------------------------------------------------------------------------
# grade


def test_files(part: str, extra: list[Path]) -> list[Path]:
    files = [REPO / "tests" / "parts" / f"test_{part}.py"]
    for path in extra:
        for f in sorted(path.rglob("*.py") if path.is_dir() else [path]):
            src = f.read_text()
            declared = re.search(r"^PART\s*=\s*['\"](\w+)['\"]", src, re.M)
            if (declared.group(1) if declared else None) == part or \
                    (declared is None and re.match(rf"test_{part}(_|\.py$)", f.name)):
                files.append(f)
    return files


def test_names(path: Path) -> list[str]:
    """The test functions of a file, read from its source (so a file that cannot be imported still counts them)."""
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


def reference_skeletons() -> dict:
    """The code outside the regions that a student copy must keep: as `make` recorded it (grading in the copy itself,
    the self-check), else this repository's own (the instructor's official grade). Either way the same text."""
    record = REPO / RECORD
    if record.is_file():
        return json.loads(record.read_text())["skeletons"]
    return {n: skeleton((REPO / n).read_text()) for n in CORE}


def outside_regions(student: Path, skeletons: dict) -> str | None:
    """None, or one line naming the first student line outside the regions that differs from the handed-out code:
    only code between the markers is graded, in the self-check and the official grade alike."""
    for name in CORE:
        path = student / name
        if not path.exists():
            continue
        text = path.read_text()
        marked = lambda t: sorted(m.group("part") for m in REGION.finditer(t))
        if marked(text) != marked(skeletons[name]):  # broken markers: composite() fails those parts
            continue
        mine, theirs = skeleton(text).splitlines(), skeletons[name].splitlines()
        for i, (a, b) in enumerate(zip(mine + [None] * len(theirs), theirs + [None] * len(mine))):
            if a != b:
                line = next((n for n, row in enumerate(text.splitlines(), 1) if row == a), None)
                where = f"`{(a or '').strip()[:60]}` at {name}:{line}" if a is not None else f"the end of {name}"
                return f"only code between the markers is graded: {where} is outside them (move it inside a region)"
    return None


def composite(student: Path, part: str, into: Path) -> str | None:
    """The reference core with the student's regions of `part` in place: written to `into`. None if it worked, else
    why the student's files cannot be used for this part."""
    into.mkdir(parents=True)
    shutil.copytree(REPO / "support", into / "support", ignore=shutil.ignore_patterns("__pycache__"))
    problem = None
    for name in CORE:
        ref = (REPO / name).read_text()
        want = len(regions(ref, part))
        if want and problem is None:
            path = student / name
            got = regions(path.read_text(), part) if path.exists() else []
            if not path.exists():
                problem = f"{name} is not in the submission (this part's code lives there)"
            elif len(got) != want:
                problem = (f"{name}: expected {want} region(s) '### BEGIN SOLUTION {part}' ... '### END SOLUTION "
                           f"{part}', found {len(got)} (were the markers changed?)")
            else:
                ref = replace_regions(ref, part, got)
        (into / name).write_text(ref)
    return problem


def run_worker(jobs: list[tuple[str, str, list[str]]]):
    """In a fresh process: for each (part, folder, test files), import the core from `folder` and run the tests.
    Prints one JSON line per part."""
    results_out = os.fdopen(os.dup(1), "w")  # the JSON lines go here; anything a test or library prints to
    os.dup2(2, 1)  # stdout (Python or C) goes to stderr instead, so it cannot be mistaken for a result
    sys.stdout = sys.stderr
    import torch
    torch.set_num_threads(1)
    own = ("model", "reft", "data", "train", "support")
    for part, folder, files in jobs:
        for name in [m for m in sys.modules if m.split(".")[0] in own]:
            del sys.modules[name]
        sys.path.insert(0, folder)
        results = []
        for f in files:
            names = test_names(Path(f))
            try:
                spec = importlib.util.spec_from_file_location(f"graded_{part}_{Path(f).stem}", f)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            except BaseException as e:  # the student's file does not import: every test of the file fails
                results += [(f"{Path(f).stem}::{n}", False, f"import failed: {short(e)}") for n in names]
                continue
            for n in names:
                try:
                    torch.manual_seed(0)
                    getattr(module, n)()
                    results.append((f"{Path(f).stem}::{n}", True, ""))
                except BaseException as e:  # noqa: BLE001 (a student's code may raise anything)
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    results.append((f"{Path(f).stem}::{n}", False, short(e)))
        sys.path.remove(folder)
        print(json.dumps({"part": part, "results": results}), file=results_out, flush=True)


def short(e: BaseException) -> str:
    """One line: the exception's message (assertion messages name the mistake), or its type."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, AssertionError):
        return msg or "assertion failed: " + traceback.format_tb(e.__traceback__)[-1].strip().splitlines()[-1]
    return f"{type(e).__name__}: {msg}"[:300]


def run_jobs(jobs: list[tuple[str, str, list[str]]], deadline: float = math.inf) -> dict:
    """part -> [(test, passed, message)], running all jobs in one worker process and starting a new one if a part
    crashes it or runs past PART_TIMEOUT (that part's tests then fail). Parts not started by the deadline are left
    out (the caller fails them)."""
    out, todo = {}, list(jobs)
    while todo and time.time() < deadline:
        proc = subprocess.Popen([sys.executable, __file__, "_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, cwd=tempfile.gettempdir(),
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        proc.stdin.write(json.dumps(todo)), proc.stdin.close()
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        while todo:
            try:
                line = lines.get(timeout=max(1.0, min(PART_TIMEOUT, deadline - time.time())))
            except queue.Empty:
                line = "timeout"
            if line not in (None, "timeout"):
                if line.startswith('{"part"'):
                    done = json.loads(line)
                    out[done["part"]] = done["results"]
                    todo = [j for j in todo if j[0] != done["part"]]
                continue
            part, _, files = todo.pop(0)  # the part running when the worker died or hung
            why = f"timed out after {PART_TIMEOUT} s" if line == "timeout" else "crashed the test process"
            out[part] = [(f"{Path(f).stem}::{n}", False, why) for f in files for n in test_names(Path(f))]
            proc.kill()
            break
        proc.wait()
    return out


def grade(student: Path, parts: list[str], extra: list[Path]) -> dict:
    missing = [m for m in REFERENCES if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"error: the grader compares with reference libraries that are not installed: "
                         f"{', '.join(missing)} (pip install -r requirements-test.txt and, with --no-deps, "
                         "-r requirements-pyreft.txt)")
    t0 = time.time()
    outside = outside_regions(student, reference_skeletons())
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        jobs, problems = [], {}
        for part in parts:
            problems[part] = outside or composite(student, part, Path(tmp) / part)
            jobs.append((part, str(Path(tmp) / part), [str(f) for f in test_files(part, extra)]))
        results = run_jobs([j for j in jobs if not problems[j[0]]], deadline=t0 + TOTAL_TIMEOUT)
        for part, _, files in jobs:  # parts not run: their tests fail with the reason
            results.setdefault(part, [(f"{Path(f).stem}::{n}", False, problems[part] or "not reached within "
                                       f"--total-timeout {TOTAL_TIMEOUT} s") for f in files for n in test_names(Path(f))])
    report = {}
    for part, _, files in jobs:
        res = results[part]
        if problems[part]:  # the regions could not be placed: the part's tests all fail, with the reason
            res = [(name, False, problems[part]) for name, _, _ in res]
        report[part] = {"passed": sum(ok for _, ok, _ in res), "total": len(res), "tests": res}
    score = sum(r["passed"] / max(r["total"], 1) for r in report.values()) / max(len(report), 1)
    return {"score": round(score, 4), "parts": report, "seconds": round(time.time() - t0, 1)}


def print_report(result: dict):
    print(f"{'part':<10} {'passed':>6} {'total':>5}  what failed")
    for part, r in result["parts"].items():
        failed = [f"{name.split('::')[-1]}: {msg}" for name, ok, msg in r["tests"] if not ok]
        print(f"{part:<10} {r['passed']:>6} {r['total']:>5}  {failed[0] if failed else ''}")
        for line in failed[1:]:
            print(f"{'':<24}{line}")
    print(f"score {result['score']:.3f} ({result['seconds']} s)")
    print(json.dumps({"score": result["score"], "parts": {p: {"passed": r["passed"], "total": r["total"]}
                                                           for p, r in result["parts"].items()}}))


def write_gradescope(path: Path, result: dict):
    """Gradescope's autograder results.json: one entry per part, worth 10 points, scored by its passed share."""
    tests = []
    for part, r in result["parts"].items():
        output = "\n".join(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {msg}" if msg else "")
                           for name, ok, msg in r["tests"])
        score = 10 * r["passed"] / max(r["total"], 1)
        tests.append({"name": f"{part} (WALKTHROUGH.md §{PARTS[part]})", "score": round(score, 2), "max_score": 10,
                      "status": "passed" if r["passed"] == r["total"] else "failed", "output": output})
    path.write_text(json.dumps({"score": round(sum(t["score"] for t in tests), 2), "tests": tests,
                                "execution_time": result["seconds"]}, indent=2))


def find_copy(folder: Path) -> Path:
    """The folder of a submission that holds the core files: folder itself, or the one nested inside it that holds
    the most of them (Gradescope unzips a zip with its top folder; a student may submit model.py and reft.py alone)."""
    candidates = [folder] + sorted(p for p in folder.glob("*/") if p.is_dir()) + \
        sorted(p for p in folder.glob("*/*/") if p.is_dir())
    best = max(candidates, key=lambda d: sum((d / n).is_file() for n in CORE))
    if not any((best / n).is_file() for n in CORE):
        raise SystemExit(f"error: {folder} holds none of {', '.join(CORE)} (nor does a folder inside it)")
    return best


def default_parts() -> list[str]:
    """The parts `make` recorded in this copy (a student's self-check grades exactly those), else every part."""
    record = REPO / RECORD
    return json.loads(record.read_text())["parts"] if record.is_file() else list(PARTS)


def main(argv=None):
    global PART_TIMEOUT, TOTAL_TIMEOUT
    if argv is None and sys.argv[1:2] == ["_worker"]:
        return run_worker(json.loads(sys.stdin.read()))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write a student copy with the chosen parts blanked")
    m.add_argument("dir", type=Path)
    m.add_argument("--parts", help=f"comma-separated, default all: {','.join(PARTS)}")
    g = sub.add_parser("grade", help="grade a student copy with this repository's tests")
    g.add_argument("dir", type=Path, nargs="?", default=Path("."))
    g.add_argument("--parts", help="grade only these parts (default: the parts `make` recorded in this copy, else all)")
    g.add_argument("--extra-tests", type=Path, action="append", default=[], help="a file or folder of private tests")
    g.add_argument("--gradescope", type=Path, help="also write Gradescope's results.json here (always, errors too)")
    g.add_argument("--part-timeout", type=float, default=PART_TIMEOUT, help="seconds for one part's tests")
    g.add_argument("--total-timeout", type=float, default=TOTAL_TIMEOUT, help="seconds for the whole grade")
    args = p.parse_args(argv)
    if args.command == "make":
        return make(args.dir, parse_parts(args.parts))
    PART_TIMEOUT, TOTAL_TIMEOUT = args.part_timeout, args.total_timeout
    try:
        student = find_copy(args.dir)
        for path in args.extra_tests:
            if not path.exists():
                raise SystemExit(f"error: --extra-tests {path} does not exist")
        parts = parse_parts(args.parts) if args.parts else default_parts()
        result = grade(student.resolve(), parts, [e.resolve() for e in args.extra_tests])
    except SystemExit as e:  # Gradescope still gets a results.json, with the reason as its output
        if args.gradescope and isinstance(e.code, str):
            args.gradescope.write_text(json.dumps({"score": 0.0, "output": e.code, "tests": []}, indent=2))
        raise
    if args.gradescope:
        write_gradescope(args.gradescope, result)
    print_report(result)


if __name__ == "__main__":
    main()
