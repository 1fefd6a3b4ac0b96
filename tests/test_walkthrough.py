"""WALKTHROUGH.md stays true: every code name, flag and file it cites exists, it uses the words a reader will meet
in the code, and its sections match the assignment parts."""
import builtins
import importlib
import re
from dataclasses import fields

from conftest import REPO

import train

TEXT = (REPO / "WALKTHROUGH.md").read_text()
MODULES = ["model", "reft", "data", "train"] + [f"support.{p.stem}" for p in (REPO / "support").glob("*.py")
                                                if p.stem != "__init__"]
SOURCE = "\n".join((REPO / (m.replace(".", "/") + ".py")).read_text() for m in MODULES)


def cited() -> list[str]:
    """Backticked spans outside code blocks."""
    prose = re.sub(r"```.*?```", "", TEXT, flags=re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def resolves(name: str) -> bool:
    """A dotted name whose head is one of our modules must resolve attribute by attribute; any other identifier
    (a method, an attribute like A or cache.method_state) must occur as a word in the core or support source."""
    name = name.removesuffix("()")
    if hasattr(builtins, name):
        return True
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            obj = importlib.import_module(".".join(parts[:i]))
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return all(re.search(rf"\b{re.escape(p)}\b", SOURCE) for p in parts)


def test_every_cited_name_flag_and_file_exists():
    flags = {"--" + f.name.replace("_", "-") for f in fields(train.TrainConfig)}
    names = cited()
    assert len(names) > 50
    for span in names:
        for word in span.split():
            if word.startswith("--"):
                assert word.split("=")[0] in flags, f"WALKTHROUGH.md cites flag {word}, which train.py lacks"
        if re.fullmatch(r"[\w./-]+\.(py|md|txt|sh)", span) or span.startswith(("support/", "tests/", "assets/")):
            assert (REPO / span).exists(), f"WALKTHROUGH.md cites {span}, which does not exist"
        elif re.fullmatch(r"[\w.-]+\.(pt|json|jsonl|model|bin)", span):  # a file the code writes or reads
            assert span in SOURCE, f"WALKTHROUGH.md cites the file name {span}, which the code never uses"
        elif re.fullmatch(r"[A-Za-z_][\w.]*(\(\))?", span) and not re.fullmatch(r"f\d+(\+l\d+)?|l\d+", span):
            assert resolves(span), f"WALKTHROUGH.md cites `{span}`, which is not in the code"


def test_the_words_and_the_try_its():
    for word in ("seam", "RoPE", "KV cache", "positions", "LoReFT", "DiReFT", "prefix", "PEDRO"):
        assert word in TEXT, word
    sections = re.findall(r"^## §(\d+)", TEXT, re.M)
    assert sections == [str(i) for i in range(len(sections))]
    for body in re.split(r"^## §\d+", TEXT, flags=re.M)[2:-1]:  # every part's section ends with a try-it
        assert "**Try it.**" in body


def test_a_cited_name_that_does_not_exist_is_caught():
    assert not resolves("model.RMSNorm.no_such_thing") and not resolves("reft.NoSuchMethod")
    assert not resolves("no_such_function_anywhere") and resolves("reft.LoReFT.R") and resolves("cache.method_state")


def test_python_names_in_the_other_docs_exist():
    """README.md, docs/reference.md and teach/README.md: every `module.name` they cite (module = a core file or a
    support module) resolves, so the documented public surface stays importable where it says."""
    for doc in ("README.md", "docs/reference.md", "teach/README.md"):
        for span in re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`", (REPO / doc).read_text()):
            head = span.split(".")[0]
            if "." in span and (head in ("model", "reft", "data", "train") or span.startswith("support.")) \
                    and not span.endswith((".py", ".pt", ".json", ".jsonl", ".md", ".model", ".bin")):
                assert resolves(span), f"{doc} cites `{span}`, which is not importable"


def test_solution_snippets_are_the_code():
    """Every line of a snippet that shows a part's solution (between <!-- BEGIN/END SOLUTION part --> markers, which
    the assignment copy blanks) is a line of the core code, so the walkthrough cannot drift from it."""
    source = re.sub(r"\s+", " ", "\n".join((REPO / f).read_text() for f in ("model.py", "reft.py", "data.py",
                                                                            "train.py")))
    snippets = re.findall(r"<!-- BEGIN SOLUTION (\w+) -->\n(.*?)<!-- END SOLUTION \1 -->", TEXT, re.S)
    assert len(snippets) >= 10
    for part, body in snippets:
        for line in body.splitlines():
            code = re.split(r"\s{2,}#|\s#\s", line)[0].strip()
            if code and not code.startswith("```"):
                assert re.sub(r"\s+", " ", code) in source, f"WALKTHROUGH's {part} snippet line is not in the code: {code}"


def test_the_try_its_run(tmp_path):
    """Every python try-it of the walkthrough runs (from the repository root, as a reader pastes it) and prints what
    its comments promise, first word of each promised line."""
    import subprocess
    import sys
    blocks = [b for b in re.findall(r"\*\*Try it\.\*\*[^\n]*\n```python\n(.*?)```", TEXT, re.S)]
    assert len(blocks) >= 8
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                           env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0 and "Traceback" not in r.stderr, f"{code}\n{r.stderr[-1500:]}"
        inline = [c.split("  #", 1)[1].split() for c in code.splitlines() if "print(" in c and "  #" in c]
        promised = [w[0] for w in inline if w and re.match(r"[\d(\[-]|True|False|tensor", w[0])]  # values, not notes
        promised += [c.lstrip("# ").split()[0] for c in code.splitlines() if c.startswith("# ") and c[2:].split()]
        for word in promised:
            assert word.strip(",:") in r.stdout, f"{code}\nexpected {word!r} in the output:\n{r.stdout}"
