"""Assignment mode: turn the core files into a programming assignment, and grade a student's work.

  python teach/assignment.py make DIR [--parts rmsnorm,rope,...]   a student copy of this repository in DIR
  python teach/assignment.py grade [DIR] [--parts ...] [--gradescope results.json] [--extra-tests PATH]
  python teach/assignment.py expected [--parts ...]                 regenerate teach/expected/ (instructor side)
  python teach/assignment.py autograder autograder.zip [--parts ...] Gradescope's autograder (instructor side)

The solution regions live in the core files between `### BEGIN SOLUTION <part>` and `### END SOLUTION <part>` (a part
may have several regions, in several files). `make` replaces each chosen part's regions by
`raise NotImplementedError("<part>: see WALKTHROUGH.md §N")` and leaves the markers, so the student writes between
them. `grade`, for each part: builds a core from the handed-out skeleton with only that part's regions taken from
the student (every other part's regions raise: the part's cases never need them), runs the part's cases
(teach/parts/PART.py) in a fresh worker process (as an unprivileged user when grading as root), and compares what
they returned, here, with the expected outputs (teach/expected/PART.pt; the official grade also draws a fresh seed
and runs the reference on it). The student's self-check (in the copy) and the official grade (in this repository)
give the same result for the same files. The score is the mean over parts of passed/total; the last stdout line is
the JSON {"score": s, "parts": {...}}. See teach/README.md.
"""

import argparse
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grading import FORMAT, SHIPPED_SEED, case_key, compare  # noqa: E402 (teach/ is not a package)

REPO = Path(__file__).resolve().parents[1]
CORE = ["model.py", "reft.py", "data.py", "train.py"]
# part -> its section of WALKTHROUGH.md (the message a blanked region raises points there)
PARTS = {"rmsnorm": 2, "rope": 3, "attention": 4, "generate": 5, "lm_loss": 6, "positions": 7, "loreft": 8,
         "direft": 9, "prefix": 10, "pedro": 11, "lora": 12}
# files a student copy must not hold: they contain the solution, plausible variants of it, or closed forms of the
# methods (instructor-side tests; tests/test_assignment.py scans every fresh copy for solution lines)
NOT_FOR_STUDENTS = ["tests/test_assignment.py", "tests/fixtures/assignment", "tests/test_reft.py",
                    "tests/test_prefix_pedro.py", "tests/test_references_*.py"]
SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", "out"}
PART_TIMEOUT = 60  # seconds for one part's cases (an endless loop in a student's region costs that part only)
TOTAL_TIMEOUT = 540  # seconds for a whole grade: parts not reached by then score 0 (fits a 10-minute autograder)
REFERENCE_TIMEOUT = 300  # seconds for the reference's own run of one part (the official grade's fresh seed)
PART_MEMORY_GB = 4.0  # address-space limit of a worker (a huge allocation fails in its own part)
WORKER_USER = "nobody"  # grading as root, student code runs as this user
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
        if any(rel.match(n) or str(rel).startswith(n + "/") for n in NOT_FOR_STUDENTS + [RECORD]):
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
    print(f"the official grade: python teach/assignment.py grade SUBMISSION --parts {','.join(parts)}")
    print(f"on Gradescope: python teach/assignment.py autograder autograder.zip --parts {','.join(parts)}")


# -----------------------------------------------------------------------------------------------------------------
# grade: a worker process per part runs the student's code; this process compares and writes every message


def case_files(part: str, extra: list[Path]) -> list[Path]:
    """teach/parts/PART.py and the instructor's private case files for the part (--extra-tests: files named
    PART*.py, or any file that sets PART = "PART")."""
    files = [REPO / "teach" / "parts" / f"{part}.py"]
    for path in extra:
        for f in sorted(path.rglob("*.py") if path.is_dir() else [path]):
            declared = re.search(r"^PART\s*=\s*['\"](\w+)['\"]", f.read_text(), re.M)
            if (declared.group(1) if declared else None) == part or \
                    (declared is None and re.match(rf"(test_)?{part}(_|\.py$)", f.name)):
                files.append(f)
    return files


def load_cases(path: Path) -> list:
    """The CASES of a case file, loaded here for their names, descriptions, tolerances and checks (case files import
    the core only inside their run functions, so no core code runs in this process)."""
    sys.path.insert(0, str(REPO / "teach"))
    try:
        spec = importlib.util.spec_from_file_location(f"cases_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "teach"))
    return module.CASES


def reference_skeletons() -> dict:
    """The code outside the regions that a student copy must keep: as `make` recorded it (grading in the copy itself,
    the self-check), else this repository's own (the instructor's official grade). Either way the same text."""
    record = REPO / RECORD
    if record.is_file():
        return json.loads(record.read_text())["skeletons"]
    return {n: skeleton((REPO / n).read_text()) for n in CORE}


def is_student_copy() -> bool:
    """A copy `make` wrote (the self-check) rather than the instructor's repository (the official grade)."""
    return (REPO / RECORD).is_file()


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


FORBIDDEN = re.compile(r"^\s*(?:import|from)\s+(transformers|peft|pyreft|pyvene)\b|__import__|importlib|"
                       r"\b(?:transformers|peft|pyreft|pyvene)\b\s*[\"']", re.M)


def forbidden_import(bodies: list[str]) -> str | None:
    """A region may not use the reference libraries (one import away from the answer) nor import by name."""
    for body in bodies:
        m = FORBIDDEN.search(body)
        if m:
            what = m.group(1) or m.group(0).strip()
            return (f"a region may not import {what} (the reference libraries, and imports by name, are not allowed "
                    "in solutions: write the code with torch)")
    return None


def composite(student: Path | None, part: str, into: Path, files: list[Path]) -> str | None:
    """A folder to grade `part` in: the skeleton of this repository's core with `part`'s regions from the student
    (None: the reference's own) and every other part's regions blanked (the cases never need them), plus the
    support code, teach/grading.py and the case files. None if it worked, else why the part cannot be graded."""
    (into / "teach" / "parts").mkdir(parents=True)
    shutil.copytree(REPO / "support", into / "support", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "teach" / "grading.py", into / "teach" / "grading.py")
    for f in files:
        shutil.copy(f, into / "teach" / "parts" / f.name)
    problem = None
    for name in CORE:
        ref = (REPO / name).read_text()
        for other in PARTS:
            if other != part:
                ref = blank(ref, other)
        want = len(regions(ref, part))
        if want and student is not None and problem is None:
            path = student / name
            got = regions(path.read_text(), part) if path.is_file() else []
            if not path.is_file():
                problem = f"{name} is not in the submission (this part's code lives there)"
            elif len(got) != want:
                problem = (f"{name}: expected {want} region(s) '### BEGIN SOLUTION {part}' ... '### END SOLUTION "
                           f"{part}', found {len(got)} (were the markers changed?)")
            else:
                problem = forbidden_import(got)
                ref = replace_regions(ref, part, got)
        (into / name).write_text(ref)
    for p in [into, *into.rglob("*")]:  # readable by the worker's user, writable by nobody but us
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return problem


class Sandbox:
    """How a worker runs: a fresh process in its own session, in an empty scratch folder, stdin/stdout/stderr closed
    to us, with a memory limit; as root, as an unprivileged user (WORKER_USER) who cannot read this repository."""

    PYCACHE: list[str] = []  # ["-X", "pycache_prefix=DIR"] when torch ships without bytecode (see warm_bytecode)

    def __init__(self, user: str | None = None, trusted: bool = False):
        self.uid = self.gid = None
        if os.geteuid() == 0 and not trusted and not is_student_copy():  # a copy holds no answer to protect
            import pwd
            try:
                entry = pwd.getpwnam(user or WORKER_USER)
            except KeyError:
                raise SystemExit(f"error: grading as root runs student code as user {user or WORKER_USER!r}, which "
                                 "does not exist; create it or pass --worker-user NAME")
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
            if not shutil.which("setpriv"):
                raise SystemExit("error: grading as root needs setpriv (util-linux) to run student code as an "
                                 "unprivileged user: apt-get install util-linux, or grade as a normal user")
            self.make_repo_private()

    def command(self, args: list[str]) -> list[str]:
        """args run as the worker's user (as root: setpriv drops every privilege before Python starts)."""
        if self.uid is None:
            return args
        return [shutil.which("setpriv"), f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", *args]

    def probe(self, code: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command([sys.executable, "-I", "-c", code]), capture_output=True, text=True,
                              timeout=120, cwd="/", env=self.env("/"))

    def make_repo_private(self):
        """The worker's user must run Python and torch, and must not read the reference, the grader or the expected
        values. This repository is made private to its owner (chmod 700) when it is not already."""
        r = self.probe("import torch")
        if r.returncode:
            why = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise SystemExit(f"error: grading as root runs student code as an unprivileged user (uid {self.uid}), "
                             f"who cannot run {sys.executable} with torch ({why}): install Python and the "
                             "requirements where every user can read them, as "
                             "teach/gradescope/setup.sh does")
        secret = REPO / "teach" / "assignment.py"
        if self.probe(f"open({str(secret)!r}).read()").returncode == 0:
            if Path(sys.prefix).resolve().is_relative_to(REPO) or Path(sys.executable).resolve().is_relative_to(REPO):
                raise SystemExit(f"error: grading as root: Python runs from inside {REPO}, so student code could read "
                                 "the reference; install it outside the repository (teach/gradescope/setup.sh does)")
            os.chmod(REPO, 0o700)
            print(f"note: made {REPO} private to its owner (chmod 700): student code runs as uid {self.uid}",
                  file=sys.stderr)
        if self.probe(f"open({str(secret)!r}).read()").returncode == 0:
            raise SystemExit(f"error: the unprivileged user (uid {self.uid}) can still read {secret}: make the "
                             "repository readable by its owner only")

    @classmethod
    def warm_bytecode(cls, into: Path) -> list[str]:
        """Workers write no bytecode (they may not: PYTHONDONTWRITEBYTECODE), so where torch was installed without its
        .pyc files every worker would compile torch's Python afresh (about 2 s more each). Then compile it once here,
        as the grader, into a folder the workers only read."""
        import importlib.util as iu
        import torch
        if Path(iu.cache_from_source(torch.__file__)).is_file():
            return []
        into.mkdir(mode=0o755)
        subprocess.run([sys.executable, "-I", "-X", f"pycache_prefix={into}", "-c", "import torch"], check=True,
                       env={**cls.env(str(into)), "PYTHONDONTWRITEBYTECODE": ""}, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=REFERENCE_TIMEOUT)
        for p in [into, *into.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        return ["-X", f"pycache_prefix={into}"]

    @staticmethod
    def env(scratch: str) -> dict:
        return {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "OMP_NUM_THREADS": "1",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}

    @staticmethod
    def limited(args: list[str]) -> list[str]:
        """args under an address-space limit (a huge allocation fails in its own part) and no core dumps: a small
        Python sets them on itself and then becomes args (lowering one's own limits needs no privilege)."""
        limit = int(PART_MEMORY_GB * 2 ** 30)
        return [sys.executable, "-I", "-c", "import os, resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
                "resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); os.execv(sys.argv[1], sys.argv[1:])", *args]

    def run(self, folder: Path, files: list[Path], seeds: list[int], timeout: float) -> tuple[dict, str | None]:
        """Run the case files' cases for each seed in a fresh worker: ({seed: {case: result}}, None), or what is
        there and why it stopped early ("timed out after 60 s", "crashed")."""
        import torch
        scratch = Path(tempfile.mkdtemp(prefix="grade-work-"))
        results, why = {}, None
        try:
            if self.uid is not None:
                os.chown(scratch, self.uid, self.gid)
            out = scratch / "out"
            cmd = self.limited(self.command([sys.executable, "-I", *self.PYCACHE, str(folder / "teach" / "grading.py"),
                                             "run", str(folder), ",".join(f.name for f in files),
                                             ",".join(map(str, seeds)), str(out)]))
            proc = subprocess.Popen(cmd, cwd=scratch, env=self.env(str(scratch)), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
                if rc:
                    why = f"the worker process crashed (exit {rc})"
            except subprocess.TimeoutExpired:
                why = f"timed out after {timeout:g} s (an endless loop?)"
            self.kill(proc)
            for seed in seeds:
                path = scratch / f"out-{seed}.pt"
                if path.is_file() and not path.is_symlink() and path.stat().st_size < 256 * 2 ** 20:
                    try:
                        results[seed] = torch.load(path, map_location="cpu", weights_only=True)
                    except Exception:  # noqa: BLE001 (a forged or truncated file: nothing from it counts)
                        results[seed] = {}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return results, why

    def run_many(self, jobs: list[tuple[Path, list[Path], list[int]]], timeout: float) -> list[dict]:
        """Trusted code only (the reference, known mistakes): several (folder, case files, seeds) jobs in one worker
        process (torch imported once) -> each job's {seed: {case: result}}."""
        import torch
        with tempfile.TemporaryDirectory(prefix="grade-many-") as scratch:
            spec = [[str(f), [p.name for p in files], seeds, f"{scratch}/out{i}"] for i, (f, files, seeds) in
                    enumerate(jobs)]
            Path(scratch, "jobs.json").write_text(json.dumps(spec))
            proc = subprocess.Popen([sys.executable, "-I", *self.PYCACHE, str(REPO / "teach" / "grading.py"),
                                     "run-many", f"{scratch}/jobs.json"], cwd=scratch, env=self.env(scratch),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            self.kill(proc)
            return [{seed: torch.load(f"{out}-{seed}.pt", weights_only=True) if Path(f"{out}-{seed}.pt").is_file()
                     else {} for seed in seeds} for _, _, seeds, out in spec]

    def kill(self, proc):
        """The worker's whole session, and as root every process of the worker's user (nothing it forked outlives
        its part and touches the next one)."""
        for target in [proc.pid]:
            try:
                os.killpg(target, 9)
            except (ProcessLookupError, PermissionError):
                pass
        if self.uid is not None:
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    uid = next(int(line.split()[1]) for line in status.read_text().splitlines()
                               if line.startswith("Uid:"))
                    if uid == self.uid:
                        os.kill(int(status.parent.name), 9)
                except (OSError, StopIteration, ValueError):
                    pass
        proc.wait()


def expected_outputs(part: str) -> dict:
    """teach/expected/PART.pt: the reference's outputs on the shipped seed and the known mistakes' outputs."""
    import torch
    path = REPO / "teach" / "expected" / f"{part}.pt"
    if not path.is_file():
        raise SystemExit(f"error: {path.relative_to(REPO)} is missing: run python teach/assignment.py expected")
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if stored.get("format") != FORMAT:
        raise SystemExit(f"error: {path.relative_to(REPO)} has an unknown format: run python teach/assignment.py "
                         "expected")
    return stored["cases"]


def grade_part(sandbox: Sandbox, student: Path, part: str, files: list[Path], shared: Path, timeout: float,
               problem: str | None, hidden: int | None, reference) -> list:
    """[(case, passed, message)] for one part: the student's outputs on the shipped seed against the stored expected
    ones, and (the official grade: `hidden` is a fresh seed) on the fresh seed against the reference's outputs
    (`reference()`: {seed: {case: result}} from the reference's run, which started with the grade)."""
    cases = [(case_key(i, str(f), c.name), c) for i, f in enumerate(files) for c in load_cases(f)]
    if problem:
        return [(key, False, problem) for key, _ in cases]
    stored = expected_outputs(part)
    official = hidden is not None
    problem = composite(student, part, shared / "student", files)
    if problem:
        return [(key, False, problem) for key, _ in cases]
    mine, why = sandbox.run(shared / "student", files, [SHIPPED_SEED] + ([hidden] if official else []), timeout)
    reference = reference() if official else {}
    if official and any(key not in reference[hidden] for key, _ in cases):
        raise SystemExit(f"error: the reference itself failed on part {part} (python teach/assignment.py expected "
                         f"--parts {part} says why)")
    out = []
    for key, case in cases:
        want0 = stored.get(key) if key in stored else None
        if want0 is None and official:  # a private case: the reference's outputs on the shipped seed
            want0 = {"want": reference[SHIPPED_SEED][key]["outputs"], "mistakes": []}
        if want0 is None:
            out.append((key, False, f"no expected outputs for {key}: run python teach/assignment.py expected"))
            continue
        msg = verdict(case, mine.get(SHIPPED_SEED, {}), key, want0["want"], want0["mistakes"], why)
        if msg is None and official:
            msg = verdict(case, mine.get(hidden, {}), key, reference[hidden][key]["outputs"], [], why)
            if msg:
                msg = f"right on the inputs shipped with the copy, wrong on new ones: {msg}"
        out.append((key, msg is None, msg or ""))
    return out


def verdict(case, results: dict, key: str, want, mistakes, why) -> str | None:
    """The message for one case on one seed (None: passed), from what the worker saved."""
    r = results.get(key) or results.get("*")
    if r is None:
        return f"{case.what}: {why or 'not run'}"
    if "error" in r:
        return f"{case.what}: raised {r['error']}"
    return compare(case, r.get("outputs"), want, mistakes)


def grade(student: Path, parts: list[str], extra: list[Path], user: str | None = None) -> dict:
    t0 = time.time()
    sandbox = Sandbox(user)
    outside = outside_regions(student, reference_skeletons())
    report, files = {}, {part: case_files(part, extra) for part in parts}
    shared, private = Path(tempfile.mkdtemp(prefix="grade-")), Path(tempfile.mkdtemp(prefix="grade-ref-"))
    os.chmod(shared, 0o711)  # the worker's user may enter (not list) the student's folders; `private` is ours only
    hidden = secrets.randbelow(2 ** 62) + 1 if not is_student_copy() else None  # the official grade's fresh seed
    pool = ThreadPoolExecutor(1)
    try:
        Sandbox.PYCACHE = Sandbox.warm_bytecode(shared / "pycache")  # (readable by the workers, not writable)
        if hidden is not None:  # the reference on the fresh seed, every part in one process, beside the students'
            for part in parts:
                composite(None, part, private / part, files[part])
            jobs = [(private / part, files[part], [SHIPPED_SEED, hidden]) for part in parts]
            future = pool.submit(Sandbox(trusted=True).run_many, jobs, REFERENCE_TIMEOUT)
        for n, part in enumerate(parts):
            left = t0 + TOTAL_TIMEOUT - time.time()
            if left < 1:
                res = [(case_key(i, str(f), c.name), False, f"not reached within --total-timeout {TOTAL_TIMEOUT:g} "
                        "s") for i, f in enumerate(files[part]) for c in load_cases(f)]
            else:
                print(f"grading {part} ({n + 1}/{len(parts)}, {time.time() - t0:.0f} s)", file=sys.stderr)
                (shared / part).mkdir(mode=0o711)
                res = grade_part(sandbox, student, part, files[part], shared / part, min(PART_TIMEOUT, left), outside,
                                 hidden, lambda n=n: future.result()[n])
            report[part] = {"passed": sum(ok for _, ok, _ in res), "total": len(res), "tests": res}
    finally:
        pool.shutdown(wait=True)
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)
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


def mutants_of(part: str) -> list[dict]:
    """The known wrong implementations of a part (tests/fixtures/assignment/mutants*.py, instructor side only)."""
    path = REPO / "tests" / "fixtures" / "assignment" / "mutants.py"
    if not path.is_file():
        return []
    spec = importlib.util.spec_from_file_location("mutants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [m for m in module.MUTANTS if m["part"] == part]


def apply_mutant(mutant: dict, into: Path) -> Path:
    """A copy of this repository's core files in `into` with one mutant's edit inside its part's regions."""
    into.mkdir(parents=True)
    for name in CORE:
        text = (REPO / name).read_text()
        if name == mutant["file"]:
            bodies = regions(text, mutant["part"])
            hits = [i for i, b in enumerate(bodies) if mutant["old"] in b]
            if len(hits) != 1 or bodies[hits[0]].count(mutant["old"]) != 1:
                raise SystemExit(f"error: mutant {mutant['name']!r}: `old` must occur once in the {mutant['part']} "
                                 f"regions of {name}")
            bodies[hits[0]] = bodies[hits[0]].replace(mutant["old"], mutant["new"])
            text = replace_regions(text, mutant["part"], bodies)
        (into / name).write_text(text)
    return into


def make_expected(parts: list[str]):
    """teach/expected/PART.pt from the reference: its outputs on the shipped seed, and the outputs of each known
    mistake (tests/fixtures/assignment) where they differ, named after it. Instructor side; run after changing a
    part's code or cases (tests/test_assignment.py checks the stored values against a fresh reference run)."""
    import torch
    if is_student_copy():
        raise SystemExit("error: expected outputs come from the reference solution: run this in the instructor's "
                         "repository, not in a student copy")
    sandbox = Sandbox(trusted=True)
    (REPO / "teach" / "expected").mkdir(exist_ok=True)
    for part in parts:
        t0 = time.time()
        files = case_files(part, [])
        cases = {c.name: c for c in load_cases(files[0])}
        with tempfile.TemporaryDirectory() as tmp:
            composite(None, part, Path(tmp) / "reference", files)
            ref, why = sandbox.run(Path(tmp) / "reference", files, [SHIPPED_SEED], REFERENCE_TIMEOUT)
            ref = ref.get(SHIPPED_SEED, {})
            broken = [f"{k}: {r['error']}" for k, r in ref.items() if "error" in r]
            if why or broken or set(ref) != set(cases):
                raise SystemExit(f"error: the reference fails part {part}: {why or (broken or ['cases missing'])[0]}")
            stored = {name: {"want": r["outputs"], "mistakes": []} for name, r in ref.items()}
            blanked = Path(tmp) / "blank"
            blanked.mkdir()
            for name in CORE:
                (blanked / name).write_text(blank((REPO / name).read_text(), part))
            composite(blanked, part, Path(tmp) / "blanked", files)
            got, _ = sandbox.run(Path(tmp) / "blanked", files, [SHIPPED_SEED], REFERENCE_TIMEOUT)
            passing = [n for n, r in got.get(SHIPPED_SEED, {}).items() if "error" not in r]
            if passing:
                raise SystemExit(f"error: part {part}: case(s) {', '.join(passing)} run without the part's code "
                                 "(with the part blanked they must raise)")
            other, _ = sandbox.run(Path(tmp) / "reference", files, [SHIPPED_SEED + 1], REFERENCE_TIMEOUT)
            fixed = [n for n, r in other.get(SHIPPED_SEED + 1, {}).items()
                     if compare(cases[n], r.get("outputs"), stored[n]["want"], []) is None]
            if fixed:
                raise SystemExit(f"error: part {part}: case(s) {', '.join(fixed)} give the same outputs for seeds 0 "
                                 "and 1 (draw their inputs from the seed, so a table of the shipped outputs cannot "
                                 "pass the official grade)")
            undetected = []
            mutants, jobs, problems = mutants_of(part), [], []
            for i, mutant in enumerate(mutants):
                folder = Path(tmp) / f"mutant{i}"
                problems.append(composite(apply_mutant(mutant, Path(tmp) / f"src{i}"), part, folder, files))
                jobs.append((folder, files, [SHIPPED_SEED]))
            for mutant, problem, got in zip(mutants, problems, sandbox.run_many(jobs, REFERENCE_TIMEOUT)):
                got, caught = got[SHIPPED_SEED], bool(problem)
                for name, case in cases.items():
                    out = got.get(name, {}).get("outputs")
                    if out is None:
                        caught = True
                    elif compare(case, out, stored[name]["want"], []) is not None:
                        caught = True
                        if isinstance(out, dict) and set(out) == set(stored[name]["want"]):
                            stored[name]["mistakes"].append([mutant.get("says", mutant["name"]), out])
                if not caught:
                    undetected.append(mutant["name"])
        torch.save({"format": FORMAT, "seed": SHIPPED_SEED, "torch": str(torch.__version__), "cases": stored},
                   REPO / "teach" / "expected" / f"{part}.pt")
        note = f"; NOT caught by any case: {', '.join(undetected)}" if undetected else ""
        print(f"{part}: {len(stored)} cases, {sum(len(c['mistakes']) for c in stored.values())} known-mistake "
              f"outputs ({time.time() - t0:.0f} s){note}")


def autograder_zip(out: Path, parts: list[str]):
    """Gradescope's autograder.zip: this repository's tracked files (the grader, the reference, teach/expected) with
    teach/gradescope/setup.sh and run_autograder at the top, run_autograder set to grade `parts`."""
    import zipfile
    if is_student_copy():
        raise SystemExit("error: the autograder holds the reference solution: build it in the instructor's repository")
    run = (REPO / "teach" / "gradescope" / "run_autograder").read_text()
    run = run.replace('PARTS="${PARTS:-}"', f'PARTS="${{PARTS:-{",".join(parts)}}}"', 1)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in tracked_files():
            if path.resolve() != out.resolve():  # (without git, every file: not the zip being written)
                z.write(path, str(path.relative_to(REPO)))
        z.write(REPO / "teach" / "gradescope" / "setup.sh", "setup.sh")
        info = zipfile.ZipInfo("run_autograder")
        info.external_attr = 0o755 << 16
        z.writestr(info, run)
    print(f"{out}: upload it as the autograder of a Gradescope programming assignment (parts {', '.join(parts)})")


def main(argv=None):
    global PART_TIMEOUT, TOTAL_TIMEOUT, PART_MEMORY_GB
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write a student copy with the chosen parts blanked")
    m.add_argument("dir", type=Path)
    m.add_argument("--parts", help=f"comma-separated, default all: {','.join(PARTS)}")
    g = sub.add_parser("grade", help="grade a student copy with this repository's cases")
    g.add_argument("dir", type=Path, nargs="?", default=Path("."))
    g.add_argument("--parts", help="grade only these parts (default: the parts `make` recorded in this copy, else all)")
    g.add_argument("--extra-tests", type=Path, action="append", default=[], help="a file or folder of private cases")
    g.add_argument("--gradescope", type=Path, help="also write Gradescope's results.json here (always, errors too)")
    g.add_argument("--part-timeout", type=float, default=PART_TIMEOUT, help="seconds for one part's cases")
    g.add_argument("--total-timeout", type=float, default=TOTAL_TIMEOUT, help="seconds for the whole grade")
    g.add_argument("--part-memory", type=float, default=PART_MEMORY_GB, help="GiB of address space per worker")
    g.add_argument("--worker-user", default=WORKER_USER, help="grading as root, run student code as this user")
    e = sub.add_parser("expected", help="regenerate teach/expected/ from the reference (instructor side)")
    e.add_argument("--parts", help="comma-separated, default all")
    z = sub.add_parser("autograder", help="write Gradescope's autograder.zip (instructor side)")
    z.add_argument("zip", type=Path)
    z.add_argument("--parts", help="the parts you assigned, comma-separated (default all)")
    args = p.parse_args(argv)
    if args.command == "make":
        return make(args.dir, parse_parts(args.parts))
    if args.command == "expected":
        return make_expected(parse_parts(args.parts))
    if args.command == "autograder":
        return autograder_zip(args.zip, parse_parts(args.parts))
    PART_TIMEOUT, TOTAL_TIMEOUT, PART_MEMORY_GB = args.part_timeout, args.total_timeout, args.part_memory
    try:
        student = find_copy(args.dir)
        for path in args.extra_tests:
            if not path.exists():
                raise SystemExit(f"error: --extra-tests {path} does not exist")
        parts = parse_parts(args.parts) if args.parts else default_parts()
        result = grade(student.resolve(), parts, [e.resolve() for e in args.extra_tests], args.worker_user)
    except SystemExit as e:  # Gradescope still gets a results.json, with the reason as its output
        if args.gradescope and isinstance(e.code, str):
            args.gradescope.write_text(json.dumps({"score": 0.0, "output": e.code, "tests": []}, indent=2))
        raise
    except Exception as e:  # noqa: BLE001 (a grader bug must still leave a results.json)
        if args.gradescope:
            args.gradescope.write_text(json.dumps({"score": 0.0, "output": f"grading failed: {type(e).__name__}: "
                                                                          f"{e}", "tests": []}, indent=2))
        raise
    if args.gradescope:
        write_gradescope(args.gradescope, result)
    print_report(result)


if __name__ == "__main__":
    main()
