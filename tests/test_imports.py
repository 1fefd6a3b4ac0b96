"""The import graph is a DAG with the core at the bottom (support/__init__.py): no cycles, counting imports inside
functions; model.py and reft.py import nothing of the project; nothing imports the command line (support/cli.py).
Only an `if __name__ == "__main__":` block may reach up: it is the program's entry."""
import ast
from pathlib import Path

from conftest import REPO

MODULES = {p.relative_to(REPO).with_suffix("").as_posix().replace("/", "."): p
           for p in [*REPO.glob("*.py"), *(REPO / "support").glob("*.py")]}
MODULES = {name.removesuffix(".__init__"): path for name, path in MODULES.items()}


def _is_main_block(node) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"


def imports_of(path: Path) -> set:
    """Project modules imported anywhere in the file (functions included), except under `if __name__ == ...`."""
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child)
    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in MODULES}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def test_no_import_cycles():
    state, cycles = {}, []

    def walk(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node] - {"support"}):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"
    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [name])
    assert not cycles, cycles


def test_the_core_is_at_the_bottom():
    assert GRAPH["model"] == set() and GRAPH["reft"] == set()
    assert GRAPH["data"] <= {"reft"}
    assert not GRAPH["train"] & {"support.cli", "support.compare", "support.classify"}
    assert [name for name, deps in GRAPH.items() if "support.cli" in deps] == []  # the command line is the top


def test_the_checker_sees_lazy_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    import model\n    from support import cli\n"
                                   "if __name__ == '__main__':\n    import train\n")
    assert imports_of(tmp_path / "m.py") == {"model", "support", "support.cli"}


BUDGETS = {"model.py": 500, "reft.py": 450, "data.py": 200, "train.py": 330}  # non-blank lines (README)


def test_core_files_keep_their_line_budgets():
    lines = {name: sum(1 for line in (REPO / name).read_text().splitlines() if line.strip()) for name in BUDGETS}
    over = {name: n for name, n in lines.items() if n > BUDGETS[name]}
    assert not over, f"over the budget: {over} (budgets {BUDGETS})"


def test_one_solution_region_per_function():
    """Each assignment part's code in a function is one region (seam calls sit outside the regions)."""
    import re
    for name in BUDGETS:
        src = (REPO / name).read_text()
        functions = [(n.lineno, n.end_lineno, n.name) for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef)]
        count = {}
        for i, line in enumerate(src.splitlines(), 1):
            m = re.search(r"### BEGIN SOLUTION (\w+)", line)
            if m:
                inner = min((f for f in functions if f[0] <= i <= f[1]), key=lambda f: f[1] - f[0])
                count[(m.group(1), inner[2])] = count.get((m.group(1), inner[2]), 0) + 1
        assert all(n == 1 for n in count.values()), (name, {k: n for k, n in count.items() if n > 1})


def test_the_core_together_does_not_grow():
    """The four core files together: at most the 1,278 non-blank lines they had before the redesign that made the
    core a leaf (moved code lands in support/, not in the textbook)."""
    total = sum(sum(1 for line in (REPO / n).read_text().splitlines() if line.strip()) for n in BUDGETS)
    assert total <= 1278, total
