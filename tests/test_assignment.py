"""Assignment mode (teach/assignment.py): the guarantees an instructor relies on.

- the reference solution grades 1.0; a student copy with every part blanked grades a clean 0 (no crash);
- blanking one part fails that part's tests and leaves every other part's grading input identical to the reference;
- each plausible wrong implementation in tests/fixtures/assignment/mutants.py loses points with a message naming it.
Each grade runs all its parts in one worker process (torch and the references imported once)."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("assignment", REPO / "teach" / "assignment.py")
A = importlib.util.module_from_spec(spec)
spec.loader.exec_module(A)
# ASSIGNMENT_PARTS=rope,attention restricts the per-part guarantees to those parts (while writing a part's tests)
ONLY = [p for p in os.environ.get("ASSIGNMENT_PARTS", "").split(",") if p] or None
spec = importlib.util.spec_from_file_location("mutants", REPO / "tests" / "fixtures" / "assignment" / "mutants.py")
mutants = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutants)


def copy_core(dest, edit=None):
    """The core files (and the folder layout the grader expects) in dest, text passed through edit(name, text)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in A.CORE:
        text = (REPO / name).read_text()
        (dest / name).write_text(edit(name, text) if edit else text)
    return dest


def test_every_part_has_regions_tests_and_a_walkthrough_section():
    walkthrough = (REPO / "WALKTHROUGH.md").read_text()
    for part, section in A.PARTS.items():
        assert sum(len(A.regions((REPO / n).read_text(), part)) for n in A.CORE) >= 1, part
        assert A.test_names(REPO / "tests" / "parts" / f"test_{part}.py"), part
        assert re.search(rf"^## §{section}\b.*`{part}`", walkthrough, re.M), f"WALKTHROUGH.md has no §{section} for {part}"
    assert sorted({m.group("part") for n in A.CORE for m in A.REGION.finditer((REPO / n).read_text())}) == \
        sorted(A.PARTS)  # no stray region names
    assert {m["part"] for m in mutants.MUTANTS} == set(A.PARTS)  # at least one wrong implementation per part


def test_solution_grades_one_and_the_last_line_is_the_json():
    out = subprocess.run([sys.executable, str(REPO / "teach" / "assignment.py"), "grade", str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["score"] == 1.0, out.stdout
    assert set(last["parts"]) == set(A.PARTS) and all(p["passed"] == p["total"] > 0 for p in last["parts"].values())


def test_student_copy_with_every_part_blanked_grades_zero(tmp_path):
    student = tmp_path / "student"
    subprocess.run([sys.executable, str(REPO / "teach" / "assignment.py"), "make", str(student)], check=True,
                   capture_output=True, timeout=120)
    for name in A.NOT_FOR_STUDENTS:
        assert not (student / name).exists(), name
    for name in A.CORE:  # no solution text left, every region raises, the markers stay
        text = (student / name).read_text()
        for m in A.REGION.finditer(text):
            assert m.group("body").strip() == f'raise NotImplementedError("{m.group("part")}: see WALKTHROUGH.md ' \
                                              f'§{A.PARTS[m.group("part")]}")'
    out = subprocess.run([sys.executable, str(REPO / "teach" / "assignment.py"), "grade", str(student),
                          "--gradescope", str(tmp_path / "results.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["score"] == 0 and all(p["passed"] == 0 < p["total"] for p in last["parts"].values()), out.stdout
    assert "NotImplementedError" in out.stdout and "import failed" not in out.stdout  # a clean 0: no crash
    gs = json.loads((tmp_path / "results.json").read_text())
    assert gs["score"] == 0 and len(gs["tests"]) == len(A.PARTS) and all(t["max_score"] == 10 for t in gs["tests"])


def test_blanking_one_part_fails_that_part_only(tmp_path):
    jobs = []
    for part in ONLY or A.PARTS:
        student = copy_core(tmp_path / f"blank_{part}", lambda name, text, p=part: A.blank(text, p))
        for other in ONLY or A.PARTS:  # what the grader builds for any other part is exactly the reference
            if other != part:
                assert A.composite(student, other, tmp_path / f"c_{part}_{other}") is None
                assert all((tmp_path / f"c_{part}_{other}" / n).read_text() == (REPO / n).read_text() for n in A.CORE)
        assert A.composite(student, part, tmp_path / f"c_{part}") is None
        jobs.append((part, str(tmp_path / f"c_{part}"), [str(f) for f in A.test_files(part, [])]))
    results = A.run_jobs(jobs)
    for part, res in results.items():
        failed = [name for name, ok, _ in res if not ok]
        assert len(failed) == len(res) > 0, f"{part}: blanked, yet {len(res) - len(failed)} test(s) pass"
        assert all("NotImplementedError" in msg for _, _, msg in res), part


def mutate(text: str, part: str, old: str, new: str) -> str:
    bodies = A.regions(text, part)
    assert sum(b.count(old) for b in bodies) == 1, f"{part}: {old!r} must occur once in the part's regions"
    return A.replace_regions(text, part, [b.replace(old, new) for b in bodies])


def test_wrong_implementations_lose_points_with_a_message_that_names_them(tmp_path):
    jobs, expected = [], {}
    for i, m in enumerate(mutants.MUTANTS):
        if ONLY and m["part"] not in ONLY:
            continue
        student = copy_core(tmp_path / f"m{i}", lambda name, text, m=m: mutate(text, m["part"], m["old"], m["new"])
                            if name == m["file"] else text)
        assert A.composite(student, m["part"], tmp_path / f"c{i}") is None
        key = f"{m['part']}#{i}"  # one job per mutant; the worker reports it under this name
        jobs.append((key, str(tmp_path / f"c{i}"), [str(f) for f in A.test_files(m["part"], [])]))
        expected[key] = m
    results = A.run_jobs(jobs)
    for key, m in expected.items():
        res = results[key]
        messages = [msg for _, ok, msg in res if not ok]
        assert messages, f"{m['part']}: the wrong implementation '{m['name']}' passes every test"
        assert any(re.search(m["message"], msg) for msg in messages), \
            f"{m['part']}: '{m['name']}' fails, but no message says {m['message']!r}: {messages}"


def test_extra_tests_and_bad_markers(tmp_path):
    extra = tmp_path / "private"
    extra.mkdir()
    (extra / "test_rmsnorm_private.py").write_text(
        "import torch\nimport model as M\n\ndef test_unit_weight():\n"
        "    assert torch.allclose(M.RMSNorm(4, 1e-6)(torch.ones(1, 4)), torch.ones(1, 4))\n\n"
        "def test_fails_on_purpose():\n    assert False, 'private check'\n")
    (extra / "other.py").write_text("PART = 'rope'\n\ndef test_declared_part():\n    pass\n")
    student = copy_core(tmp_path / "s", lambda name, text: text.replace("### END SOLUTION rope", "", 1))
    result = A.grade(student, ["rmsnorm", "rope"], [extra])
    rms, rope = result["parts"]["rmsnorm"], result["parts"]["rope"]
    n = len(A.test_names(REPO / "tests" / "parts" / "test_rmsnorm.py"))
    assert (rms["passed"], rms["total"]) == (n + 1, n + 2)  # the private file counts, its failure too
    assert any("private check" in msg for _, _, msg in rms["tests"])
    assert rope["passed"] == 0 and "markers" in rope["tests"][0][2]  # a broken marker: a clear reason, no crash
    assert rope["total"] == len(A.test_names(REPO / "tests" / "parts" / "test_rope.py")) + 1


def _grade(cwd, *args):
    r = subprocess.run([sys.executable, "teach/assignment.py", "grade", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=600)
    return r, (json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None)


def test_the_copy_knows_its_parts_and_the_hint_is_the_exact_command(tmp_path):
    copy = tmp_path / "copy"
    r = subprocess.run([sys.executable, str(REPO / "teach" / "assignment.py"), "make", str(copy), "--parts",
                        "rmsnorm,rope"], capture_output=True, text=True, timeout=120, check=True)
    assert f"cd {copy} && python teach/assignment.py grade ." in r.stdout
    assert "grade SUBMISSION --parts rmsnorm,rope" in r.stdout
    assert json.loads((copy / A.RECORD).read_text())["parts"] == ["rmsnorm", "rope"]
    _, result = _grade(copy, ".")  # the student's self-check: exactly the assigned parts
    assert set(result["parts"]) == {"rmsnorm", "rope"} and result["score"] == 0.0


def test_code_outside_the_regions_is_refused_alike_by_self_check_and_official_grade(tmp_path):
    """A correct rmsnorm that calls a helper defined outside the region: one line says where, in both grades."""
    copy = tmp_path / "copy"
    subprocess.run([sys.executable, str(REPO / "teach" / "assignment.py"), "make", str(copy), "--parts", "rmsnorm"],
                   capture_output=True, timeout=120, check=True)
    text = (copy / "model.py").read_text()
    text = text.replace("class RMSNorm(nn.Module):", "def _norm(xf, eps):\n    return xf * torch.rsqrt(xf.pow(2).mean("
                        "-1, keepdim=True) + eps)\n\n\nclass RMSNorm(nn.Module):")
    ref_body = A.regions((REPO / "model.py").read_text(), "rmsnorm")[0]
    text = A.replace_regions(text, "rmsnorm", [ref_body.replace(
        "xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)", "xf = _norm(xf, self.eps)")])
    (copy / "model.py").write_text(text)
    mine, mine_json = _grade(copy, ".")
    official, official_json = _grade(REPO, str(copy), "--parts", "rmsnorm")
    for r, result in ((mine, mine_json), (official, official_json)):
        assert result["parts"]["rmsnorm"]["passed"] == 0, r.stdout
        assert "only code between the markers is graded: `def _norm(xf, eps):` at model.py:" in r.stdout
    assert mine_json == official_json


def test_make_copies_tracked_files_only(tmp_path):
    backup = REPO / "model.py~"  # an editor's backup with the full solutions, not tracked by git
    backup.write_text((REPO / "model.py").read_text())
    try:
        subprocess.run([sys.executable, str(REPO / "teach" / "assignment.py"), "make", str(tmp_path / "copy"),
                        "--parts", "rmsnorm"], capture_output=True, timeout=120, check=True)
    finally:
        backup.unlink()
    assert not (tmp_path / "copy" / "model.py~").exists() and (tmp_path / "copy" / "model.py").exists()
    assert not (tmp_path / "copy" / "tests" / "fixtures" / "assignment").exists()


def test_gradescope_nested_partial_and_broken_submissions(tmp_path):
    """A zip's top folder is found; a part whose file is missing scores 0 with a note while the others are graded;
    a submission with no core file at all still gets a results.json, with the reason."""
    nested = tmp_path / "sub" / "my-repo"
    nested.mkdir(parents=True)
    for name in ("model.py", "reft.py"):  # the student handed in two files: train.py and data.py are missing
        (nested / name).write_text((REPO / name).read_text())
    out = tmp_path / "results.json"
    r, result = _grade(REPO, str(tmp_path / "sub"), "--parts", "rmsnorm,lm_loss", "--gradescope", str(out))
    assert r.returncode == 0, r.stderr
    assert result["parts"]["rmsnorm"]["passed"] == result["parts"]["rmsnorm"]["total"] > 0
    assert result["parts"]["lm_loss"]["passed"] == 0
    tests = {t["name"].split()[0]: t for t in json.loads(out.read_text())["tests"]}
    assert "train.py is not in the submission" in tests["lm_loss"]["output"] and tests["rmsnorm"]["score"] == 10
    empty = tmp_path / "empty"
    empty.mkdir()
    r, _ = _grade(REPO, str(empty), "--gradescope", str(out))
    assert r.returncode != 0 and "holds none of model.py" in json.loads(out.read_text())["output"]
