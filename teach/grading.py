"""The two halves of grading one part, kept apart: the worker runs the student's code, the parent decides.

Worker (`python -I grading.py run FOLDER PART SEED OUT`, a fresh process per part, an unprivileged user when the
grader runs as root): imports the core from FOLDER (the skeleton with only this part's regions filled in; every
other part's regions raise), runs each case of teach/parts/PART.py on inputs drawn from SEED, and saves what the
student's code returned (tensors and plain values) to OUT. It decides nothing and prints nothing anyone reads.

Parent (teach/assignment.py): loads OUT as weights only, compares each case's outputs with the expected ones
(`compare`, below: the same function in the student's self-check and the official grade) and writes every message.
Expected outputs come from teach/expected/PART.pt (made by the reference: `python teach/assignment.py expected`),
which also holds the outputs of known mistakes, so a wrong output that equals one gets that mistake's name.

A case file (teach/parts/PART.py) defines CASES, a list of Case: `run(seed)` builds inputs from torch.Generator(seed)
(never from another part's code: where a part calls another part's function, the case replaces that function with a
stand-in via `stand_in`), calls the part's functions and returns {name: tensor or plain value}; `check(got, want)`
(optional) is a property check the parent runs too (no solution code in it: the copy ships to students).
"""
import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

FORMAT = 1  # of teach/expected/PART.pt: {"format", "seed", "torch", "cases": {name: {"want", "mistakes"}}}
SHIPPED_SEED = 0  # the inputs whose expected outputs ship in teach/expected (the official grade also draws a new seed)


@dataclass
class Case:
    name: str  # unique within the part
    run: Callable  # run(seed) -> {output name: tensor | int | float | bool | str | list}, in the worker
    what: str  # what the outputs are, for messages: "RMSNorm(x) for x [2, 5, 16] in fp32"
    atol: float = 1e-5  # |got - want| <= atol + rtol·|want| elementwise (floats); integer/bool outputs must be equal
    rtol: float = 1e-5
    check: Callable | None = None  # check(got, want) -> message or None: a property, run by the parent after compare
    hints: dict = field(default_factory=dict)  # output name -> what it means when only that output is wrong


@contextlib.contextmanager
def stand_in(module, name: str, fn):
    """Replace module.name by fn inside the block (another part's function this part calls: its grade must not
    depend on that part's code). The stand-in is any function with the right shapes, not that part's solution."""
    old = getattr(module, name)
    setattr(module, name, fn)
    try:
        yield
    finally:
        setattr(module, name, old)


def guarded(names, fn):
    """fn() -> {name: output}; an error (other than a blank part's NotImplementedError) becomes the outputs, as one
    line of text, so a known mistake that raises can still be named (its stored outputs are that text)."""
    try:
        return fn()
    except NotImplementedError:
        raise
    except (RuntimeError, TypeError, AttributeError, IndexError, ValueError) as e:
        line = (str(e).strip().splitlines() or [""])[0][:160]
        return {n: f"raised {type(e).__name__}: {line}" for n in names}


def generator(seed: int, offset: int = 0):
    import torch
    return torch.Generator().manual_seed((seed * 1_000_003 + offset) % (2 ** 63))


# -----------------------------------------------------------------------------------------------------------------
# parent side: pure comparisons of values (no student code runs here)


def _describe(x) -> str:
    import torch
    if isinstance(x, torch.Tensor):
        return f"a tensor {list(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return f"{type(x).__name__} {x!r}"[:80]


def _plain(x):
    """Plain values -> tensors where a tensor is expected (a list of ints, a float), so either form compares."""
    import torch
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (bool, int, float)) or (isinstance(x, (list, tuple)) and all(
            isinstance(v, (bool, int, float)) for v in _flat(x))):
        try:
            return torch.tensor(x)
        except (ValueError, TypeError, RuntimeError):
            return x
    return x


def _flat(x):
    for v in x:
        if isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def difference(got, want, atol: float, rtol: float) -> str | None:
    """None if got equals want within tolerance, else what differs (one phrase)."""
    import torch
    got, want = _plain(got), _plain(want)
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected {_describe(want)}, got {_describe(got)}"
        if tuple(got.shape) != tuple(want.shape):
            return f"has shape {list(got.shape)}, expected {list(want.shape)}"
        if want.dtype.is_floating_point != got.dtype.is_floating_point or \
                (want.dtype.is_floating_point and got.dtype != want.dtype) or \
                (want.dtype == torch.bool) != (got.dtype == torch.bool):
            return f"has dtype {str(got.dtype).replace('torch.', '')}, expected {str(want.dtype).replace('torch.', '')}"
        if not want.dtype.is_floating_point:
            if not torch.equal(got.long(), want.long()):
                n = int((got.long() != want.long()).sum())
                return f"differs from the expected values in {n} of {want.numel()} entries"
            return None
        g, w = got.double(), want.double()
        if not torch.isfinite(g).all() and torch.isfinite(w).all():
            return "holds NaN or inf"
        both = torch.isfinite(g) & torch.isfinite(w)
        same_nan = torch.equal(torch.isnan(g), torch.isnan(w))
        inf = torch.isinf(g) | torch.isinf(w)
        if not torch.equal(torch.isfinite(g), torch.isfinite(w)) or not same_nan or not torch.equal(g[inf], w[inf]):
            return "has inf/NaN where the expected values do not (or the reverse)"
        err = (g[both] - w[both]).abs()
        bad = err > atol + rtol * w[both].abs()
        if bool(bad.any()):
            return f"differs from the expected values by up to {float(err.max()):.2e} (tolerance {atol:g} + " \
                   f"{rtol:g}·|expected|)"
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"expected keys {sorted(want)}, got {sorted(got) if isinstance(got, dict) else _describe(got)}"
        for k in want:
            d = difference(got[k], want[k], atol, rtol)
            if d:
                return f"[{k!r}] {d}"
        return None
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return f"expected {len(want)} items, got {_describe(got)}"
        for i, (a, b) in enumerate(zip(got, want)):
            d = difference(a, b, atol, rtol)
            if d:
                return f"[{i}] {d}"
        return None
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return None if abs(got - want) <= atol + rtol * abs(want) or (math.isnan(got) and math.isnan(want)) \
            else f"is {got!r}, expected {want!r}"
    return None if type(got) is type(want) and got == want else f"is {_describe(got)}, expected {_describe(want)}"


def compare(case: Case, got: dict, want: dict, mistakes: list) -> str | None:
    """None when the student's outputs `got` match `want`, else the one message the student sees. A wrong output
    that matches a stored known mistake's outputs is named after that mistake."""
    if not isinstance(got, dict):
        return f"{case.what}: the case returned nothing usable"
    wrong = [(k, difference(got.get(k), v, case.atol, case.rtol)) for k, v in want.items()]
    wrong = [(k, d) for k, d in wrong if d]
    if wrong:
        for says, outputs in mistakes:  # every output equal to a known mistake's: say which mistake
            if all(difference(got.get(k), v, case.atol, case.rtol) is None for k, v in outputs.items()):
                return f"{case.what}: {says}"
        k, d = wrong[0]
        hint = f" ({case.hints[k]})" if k in case.hints else ""
        return f"{case.what}: `{k}` {d}{hint}"
    if case.check is not None:
        return case.check(got, want)
    return None


# -----------------------------------------------------------------------------------------------------------------
# worker side: runs the student's code; its only output is the file OUT


def load_cases(path: str) -> list:
    """The CASES of a case file (the worker imports the core from its folder, first on the import path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"cases_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CASES


def case_key(index: int, path: str, name: str) -> str:
    """A case's name in results: plain for the part's own file (the first), FILE::name for private case files."""
    return name if index == 0 else f"{os.path.basename(path)[:-3]}::{name}"


def _portable(x, depth=0):
    """What a case returned -> tensors (detached, on the CPU, own storage) and plain values only."""
    import torch
    if depth > 8:
        raise TypeError("outputs nested too deeply")
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone().contiguous()
    if isinstance(x, dict):
        return {str(k): _portable(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_portable(v, depth + 1) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"a case returned a {type(x).__name__}")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]


def run_worker(folder: str, files: list[str], seeds: list[int], out: str):
    """Run every case of the case files (in FOLDER/teach/parts) on inputs from each seed; save {case: {"outputs": ...}
    | {"error": line}} to OUT-SEED.pt after each case (so a crash or a timeout keeps the cases already run)."""
    sys.path[:0] = [folder, os.path.join(folder, "teach")]
    import torch
    torch.set_num_threads(1)
    loaded = []
    for i, name in enumerate(files):
        path = os.path.join(folder, "teach", "parts", name)
        try:
            loaded.append((i, path, load_cases(path), None))
        except BaseException as e:  # noqa: BLE001 (the part's core does not import: its cases fail with why)
            loaded.append((i, path, [], _one_line(e)))
    for seed in seeds:
        results = {}

        def save():
            torch.save(results, f"{out}-{seed}.tmp")
            os.replace(f"{out}-{seed}.tmp", f"{out}-{seed}.pt")
        for i, path, cases, error in loaded:
            if error:
                results[case_key(i, path, "*")] = {"error": error}
            for case in cases:
                try:
                    torch.manual_seed(seed)
                    results[case_key(i, path, case.name)] = {"outputs": _portable(case.run(seed))}
                except BaseException as e:  # noqa: BLE001 (a student's code may raise anything)
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    results[case_key(i, path, case.name)] = {"error": _one_line(e)}
                save()
        save()


def run_many(jobs: list):
    """Several [folder, files, seeds, out] jobs in this one process, the core modules forgotten between them: for the
    instructor's checks of many known mistakes at once (`expected`, the tests), never for a student's grade."""
    for folder, files, seeds, out in jobs:
        for name in [m for m in sys.modules if m.split(".")[0] in ("model", "reft", "data", "train", "support")]:
            del sys.modules[name]
        path = list(sys.path)
        run_worker(folder, files, seeds, out)
        sys.path[:] = path


if __name__ == "__main__" and sys.argv[1:2] == ["run"]:
    run_worker(sys.argv[2], sys.argv[3].split(","), [int(x) for x in sys.argv[4].split(",")], sys.argv[5])
elif __name__ == "__main__" and sys.argv[1:2] == ["run-many"]:
    import json
    with open(sys.argv[2]) as f:
        run_many(json.load(f))
