"""Compare methods in one command (README "Compare methods"):

  python train.py --model stories260K --data examples/steer_train.jsonl --eval-data examples/steer_eval.jsonl \\
      --method none,loreft,direft,prefix,pedro,lora --seeds 3 --out runs/compare

train.py hands a comma-separated --method (or --seeds N > 1, or --lr-grid) over to `compare`. Every (method, seed) run
is an ordinary train.train run (support.classify.train_classifier on an encoder) with the same data, epochs, batches
and evaluation, written to OUT/<method>/seed<k>/ (OUT/<method>/lr<x>/seed<k> with --lr-grid). Each run loads its own
fresh copy of the base model and reseeds torch, so nothing one run does can reach the next one or the frozen model's
samples. `none` is the floor: the frozen model evaluated as it is (language modelling), or the classification head
alone on the frozen encoder.

Learning rates: each method trains at its own default (support/defaults.py) unless --lr is given; one lr for all would
rank learning rates, not methods. --lr-grid 1e-3,3e-3,1e-2 first trains seed --seed of each method at each lr, keeps
the lr with the best main metric on the eval data (which then also reports the result: optimistic, and the table says
so), and runs the other seeds at that lr.

A comparison can take hours: each finished run writes OUT/<method>/seed<k>/result.json, and the same command with
--resume reuses every finished run (after checking it was made with the same settings), continues a language-model run
that Ctrl-C stopped from its checkpoint.pt, and trains the rest.

Writes OUT/compare.json (one row per method: parameters, lr, timings, peak memory, metrics as mean and spread over the
seeds, the loss curve), OUT/compare.md (the same as a table, also printed) and, where matplotlib is installed,
OUT/compare.png (the loss curves; the main metric against trainable parameters). The last stdout line is JSON: each
method's mean metrics. Each run's own output goes to stderr.
"""
import contextlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, replace

import torch

import reft
from data import collate, split_heldout, tokenize_examples
from support.measure import static_bytes, transient_peak
from support.records import read_records
from support import defaults
from support.files import atomic_text
from support.runs import EXIT_CODES
from support.untrusted import read_json

METHODS = ("none", "loreft", "direft", "prefix", "pedro", "lora")  # train.py imports this file: `import train` is late
MAIN_METRIC = {"lm": "exact_match"}  # classification: the task's own (accuracy; MCC for CoLA, Pearson for STS-B)


# -----------------------------------------------------------------------------------------------------------------
# The plan: methods, seeds, learning rates, folders


def plan(cfg, task: str) -> tuple[list[str], list[int], list[float]]:
    """(methods, seeds, lr grid) from the flags, after refusing what a comparison cannot do."""
    methods = [m.strip() for m in cfg.method.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"bad --method {cfg.method!r}: expected distinct names among {', '.join(METHODS)}")
    try:
        grid = [float(x) for x in cfg.lr_grid.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"bad --lr-grid {cfg.lr_grid!r}: expected comma-separated numbers like 1e-3,3e-3") from None
    if any(lr <= 0 for lr in grid) or (cfg.lr_grid and cfg.lr):
        raise ValueError("--lr-grid takes positive learning rates, and replaces --lr (give one of them)")
    for flag, value in (("--load", cfg.load), ("--max-steps", cfg.max_steps)):
        if value:
            raise ValueError(f"{flag} is for one run; a comparison trains every method to the end (use --epochs)")
    if not cfg.data:
        raise ValueError("a comparison trains: pass --data FILE (and --eval-data FILE)")
    return methods, [cfg.seed + k for k in range(seed_count(cfg.seeds, len(methods)))], grid


def seed_count(seeds: str, n_methods: int) -> int:
    """--seeds: a positive number, or auto (3 when comparing several methods, else 1)."""
    if str(seeds) == "auto":
        return 3 if n_methods > 1 else 1
    if not str(seeds).isdigit() or int(seeds) < 1:
        raise ValueError(f"--seeds {seeds}: expected a number of runs per method (1 or more), or auto")
    return int(seeds)


def is_comparison(cfg) -> bool:
    """Several methods, several seeds or an lr grid: a comparison (support/compare.py), not one run."""
    return "," in cfg.method or seed_count(cfg.seeds, 1) > 1 or bool(cfg.lr_grid)


def run_folder(cfg, method: str, seed: int, lr: float | None) -> str:
    sub = [method] + ([f"lr{lr:g}"] if lr is not None else []) + [f"seed{seed}"]
    return os.path.join(cfg.out, *sub)


def check_folders(cfg, folders: list[str]):
    """Refuse to overwrite an earlier comparison (or a run where one of ours goes) before any training starts; with
    --resume, refuse only when there is nothing to resume, or a finished run was made with other settings."""
    if cfg.resume:
        done = [f for f in folders if os.path.exists(os.path.join(f, RESULT))]
        if not done and not any(os.path.exists(os.path.join(f, "checkpoint.pt")) for f in folders):
            raise FileNotFoundError(f"--resume: no finished or stopped run of this comparison in {cfg.out}")
        return
    taken = [f for f in folders if os.path.exists(os.path.join(f, "reft.pt"))]
    if os.path.exists(os.path.join(cfg.out, "compare.json")):
        taken.insert(0, cfg.out)
    if taken and not cfg.overwrite:
        raise ValueError(f"{taken[0]} already holds a run: pass --overwrite to replace the comparison, or another "
                         "--out")


# -----------------------------------------------------------------------------------------------------------------
# One run


def frozen_model_run(cfg) -> dict:
    """`none` on a language model: the frozen model evaluated as train.train evaluates a method (nothing trains)."""
    import train
    model, tok = train.load_model_and_tokenizer(cfg)
    mcfg, eos = train.method_config(cfg, model), train.end_token(model, tok)
    read = lambda path: tokenize_examples(read_records(path), tok, cfg.template, cfg.max_length, eos)
    eval_ex = read(cfg.eval_data) if cfg.eval_data else split_heldout(read(cfg.data), cfg.eval_fraction, cfg.seed)[1]
    result = train.evaluate(model, tok, reft.Method(), mcfg, eval_ex, cfg)
    result.pop("preds")
    return result | {"curve": []}


RESULT = "result.json"  # in each run's folder once it has finished: its result, and the settings it ran with


def settings(c) -> dict:
    """What makes two runs the same run: every flag but --resume and --overwrite."""
    return {k: v for k, v in asdict(c).items() if k not in ("resume", "overwrite")}


def finished_run(c) -> dict | None:
    """With --resume: the saved result of this run, if it finished with the same settings (else None, or an error)."""
    path = os.path.join(c.out, RESULT)
    if not (c.resume and os.path.exists(path)):
        return None
    saved = read_json(path)
    now = settings(c)
    if not (isinstance(saved, dict) and isinstance(saved.get("settings"), dict) and "result" in saved):
        raise ValueError(f"{path}: not a result.json written by a comparison (pass --overwrite to train again)")
    diff = [f"{k} {v!r} there, {now.get(k)!r} here" for k, v in saved["settings"].items() if now.get(k) != v]
    if diff:
        raise ValueError(f"--resume: {c.out} was trained with other settings ({', '.join(diff)}); pass the same flags, "
                         "or --overwrite to train the comparison again")
    return saved["result"]


def run_one(cfg, task: str, method: str, seed: int, lr: float | None) -> dict:
    """One ordinary run (its stdout goes to stderr, so that ours stays the table and the final line); with --resume,
    a finished run is read back and a stopped language-model run continues from its checkpoint."""
    import train
    from support.classify import train_classifier
    out = run_folder(cfg, method, seed, lr)
    c = replace(cfg, method=method, seed=seed, lr=lr or cfg.lr, out=out, seeds="1", lr_grid="", overwrite=True)
    name = f"{method}, seed {seed}" + (f", lr {lr:g}" if lr else "")
    if (saved := finished_run(c)) is not None:
        print(f"== {name}: finished in {out}, reused (--resume)", file=sys.stderr)
        return saved
    stopped = os.path.exists(os.path.join(out, "checkpoint.pt")) and not (task == "lm" and method == "none")
    c = replace(c, resume=cfg.resume and stopped)  # a stopped training run continues from its checkpoint
    print(f"== {name}: {out}" + (" (continued from its checkpoint)" if c.resume else ""), file=sys.stderr)
    t0, cpu0 = time.time(), time.process_time()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if task == "classify":
                result = train_classifier(c)
            elif method == "none":
                result = frozen_model_run(c)
            else:
                result = train.train(c)
    except KeyboardInterrupt:
        result = {}
    if "curve" not in result:  # Ctrl-C/SIGTERM: train.train saved a checkpoint (the others stop where they are)
        print(f"comparison stopped during {name}; continue it with the same command and --resume", file=sys.stderr)
        raise SystemExit(EXIT_CODES.get(result.get("stopped"), 130))  # 130 Ctrl-C, 143 SIGTERM: stopped, resumable
    result = result | {"wall_s": time.time() - t0, "cpu_s": time.process_time() - cpu0, "folder": out}
    atomic_text(os.path.join(out, RESULT), json.dumps({"settings": settings(c), "result": result}))  # always whole
    return result


def score(result: dict, metric: str) -> tuple:
    """Sortable: the main metric (higher is better), then a lower eval loss."""
    return result.get(metric, -math.inf), -result.get("eval_loss", 0.0)


# -----------------------------------------------------------------------------------------------------------------
# Measurements of a method that do not depend on the seed


def measure(cfg, task: str, method: str) -> dict:
    """What does not depend on the seed: the trainable parameters of the method (and of the classification head,
    counted apart as the ReFT paper does), their share of the base model's, in %, and peak_mem_mb, the MiB in tensors
    during one training step as benchmarks/bench.py counts them (support/measure.py): weights, method, head and AdamW
    state, plus the step's peak of new allocations; not the process's RSS. The step is on the first --batch-size
    examples of --data, after one warm-up step (so the optimizer state exists). None where nothing trains (`none` on
    a language model)."""
    import train
    from support import classify
    c = replace(cfg, method=method)
    torch.manual_seed(c.seed)
    model, tok = train.load_model_and_tokenizer(c)
    mcfg = train.method_config(c, model, task)
    m = classify.method_or_head_only(mcfg, model).train()
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    base = sum(p.numel() for p in model.parameters())
    out = {"trainable_params": n, "trainable_pct": 100 * n / base, "base_params": base, "peak_mem_mb": None}
    if task == "classify":
        train_ex, _, _, labels = classify.classification_data(c, tok, min(c.max_length, model.config.max_length))
        head = model.add_classifier(max(len(labels), 1)).float()
        out["head_params"] = sum(p.numel() for p in head.parameters())
        model.train()  # dropout as in training
        batch = train.to_device(classify.collate_classification(train_ex[:c.batch_size], tok.pad_id,
                                                                mcfg.position_scheme()), c.device)
        loss_fn = lambda: classify.classification_loss(classify.classifier_logits(model, m, batch), batch["labels"])
        params = list(m.parameters()) + list(head.parameters())
    elif method == "none":
        return out
    else:
        examples = tokenize_examples(read_records(c.data), tok, c.template, c.max_length, train.end_token(model, tok))
        batch = train.to_device(collate(examples[:c.batch_size], tok.pad_id, mcfg.position_scheme()), c.device)
        loss_fn = lambda: train.lm_loss(model, m, batch)
        params = list(m.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, foreach=True)

    def step():
        with train.autocast(c.device):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()  # warm-up: AdamW's state exists from here on, as in every later step
    return out | {"peak_mem_mb": (static_bytes(model, m, opt) + transient_peak(step, c.device)) / 2 ** 20}


# -----------------------------------------------------------------------------------------------------------------
# Rows, the table, the picture


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def make_row(method: str, lr: float, runs: list[dict], measured: dict, grid: dict) -> dict:
    """One method's row of compare.json from its runs (one per seed)."""
    not_metrics = ("n", "epoch", "wall_s", "cpu_s", "step", "seed")
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and k not in not_metrics]
    steps = [b[2] - a[2] for r in runs for a, b in zip([(0, 0.0, 0.0)] + r["curve"], r["curve"])]
    by_step = {}
    for r in runs:
        for s, loss, _ in r["curve"]:
            by_step.setdefault(s, []).append(loss)
    row = {"method": method, **measured, "lr": lr, "seeds": [r["seed"] for r in runs],
           "train_s": statistics.mean(r["curve"][-1][2] if r["curve"] else 0.0 for r in runs),
           "step_ms": 1000 * statistics.median(steps) if steps else None,
           "run_wall_s": statistics.mean(r["wall_s"] for r in runs),  # a whole run: loading, training, evaluation
           "run_cpu_s": statistics.mean(r["cpu_s"] for r in runs),  # the same in process CPU time (all threads)
           **{k: spread([r[k] for r in runs]) for k in keys},
           "loss_curve": [[s, statistics.mean(v)] for s, v in sorted(by_step.items())],
           "runs": [r["folder"] for r in runs]}
    if "epoch" in runs[0]:
        row["best_epoch"] = [r["epoch"] for r in runs]
    if grid:
        row["lr_grid"] = grid  # {lr: main metric of seed --seed}
    return row


def fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, dict):
        return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}" if len(x["values"]) > 1 else f"{x['mean']:.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else f"{x:.{digits}g}"


def table(rows: list[dict], metrics: list[str], task: str, seeds: list[int], grid: list[float]) -> str:
    head = ["method", "trainable params"] + (["+ head"] if task == "classify" else []) + \
           ["% of base", "lr", "train s", "step ms", "peak MiB"] + [m.replace("_", " ") for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = "none (head only)" if r["method"] == "none" and task == "classify" else \
            "none (frozen model)" if r["method"] == "none" else r["method"]
        lr = "–" if r["method"] == "none" and task == "lm" else f"{r['lr']:g}" + (" *" if grid else "")
        cells = [name, fmt(r["trainable_params"])] + ([fmt(r["head_params"])] if task == "classify" else []) + \
                [f"{r['trainable_pct']:.3f}", lr, f"{r['train_s']:.1f}",
                 "–" if r["step_ms"] is None else f"{r['step_ms']:.1f}",
                 "–" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"] + \
                [fmt(r.get(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Seeds {', '.join(map(str, seeds))}: mean ± sample std over the seeds" if len(seeds) > 1 else
             f"Seed {seeds[0]}", "train s: the training loop of one run (no evaluation)",
             "step ms: median optimizer step",
             "peak MiB: tensor bytes of one training step (weights, method, optimizer state, activations)"]
    if task == "classify":
        notes.append("metrics: the best epoch on the eval data")
    if grid:
        notes.append(f"* lr picked per method from {', '.join(f'{x:g}' for x in grid)} by seed {seeds[0]}'s score on "
                     "the eval data, which also reports it (optimistic)")
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + ".\n"


def plot(rows: list[dict], metric: str, task: str, path: str) -> bool:
    """The loss curves (left) and the main metric against trainable parameters on a log axis (right); the floor
    (`none`) as a horizontal line. False, with one line on stderr, when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no compare.png (pip install matplotlib for the picture)", file=sys.stderr)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    color = {m: f"C{i}" for i, m in enumerate(METHODS)}  # one colour per method, in both panels
    window = 1
    for r in rows:
        if r["loss_curve"]:
            s, loss = zip(*r["loss_curve"])
            window = max(1, len(loss) // 50)  # a moving average: one batch's loss is noisy
            smooth = torch.tensor(loss).unfold(0, window, 1).mean(1).tolist() if len(loss) >= window else loss
            left.plot(s[window - 1:], smooth, label=r["method"] if r["method"] != "none" else "none (head only)",
                      lw=1.2, color=color[r["method"]])
    ylabel = "training loss (mean over seeds)" + (f", mean of {window} steps" if window > 1 else "")
    left.set(xlabel="optimizer step", ylabel=ylabel, yscale="log", title="loss curves")
    if any(r["loss_curve"] for r in rows):
        left.legend(fontsize=8)
    points = [(r["trainable_params"], r[metric]["mean"]) for r in rows if r["method"] != "none" and r.get(metric)]
    span = ((max(y for _, y in points) - min(y for _, y in points)) or 1.0) if points else 1.0
    for r in rows:
        m = r.get(metric)
        if m is None:
            continue
        if r["method"] == "none":
            right.axhline(m["mean"], color="gray", ls="--", lw=1)
            right.annotate("head only" if task == "classify" else "frozen model", (0.02, m["mean"]),
                           xycoords=("axes fraction", "data"), fontsize=8, color="gray", va="bottom")
            continue
        x, y = r["trainable_params"], m["mean"]
        right.errorbar(x, y, yerr=m["std"], fmt="o", capsize=3, color=color[r["method"]])
        below = any(abs(math.log(x / x2)) < 0.2 and 0 < y2 - y < 0.06 * span for x2, y2 in points)  # a close one above
        right.annotate(r["method"], (x, y), textcoords="offset points", xytext=(6, -11 if below else 4), fontsize=9,
                       color=color[r["method"]])
    right.margins(y=0.12)  # room for the labels above the highest point
    sizes = [r["trainable_params"] for r in rows if r["method"] != "none" and r.get(metric)]
    if sizes:  # room for the labels: a factor 2 either side
        right.set_xlim(min(sizes) / 2, max(sizes) * 2)
    right.set(xscale="log", xlabel="trainable parameters of the method" + (" (head not counted)" if task ==
              "classify" else ""), ylabel=metric.replace("_", " ") + " (mean ± std)",
              title=f"held-out {metric.replace('_', ' ')} vs trainable parameters")
    right.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels collide
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -----------------------------------------------------------------------------------------------------------------
# The command


def compare(cfg, task: str) -> list[dict]:
    import train
    methods, seeds, grid = plan(cfg, task)
    folders = [run_folder(cfg, m, s, lr) for m in methods for s in seeds for lr in (grid or [None])]
    check_folders(cfg, folders)
    os.makedirs(cfg.out, exist_ok=True)
    rows, metric = [], MAIN_METRIC.get(task)
    for m in methods:
        tried = {}  # lr -> seed --seed's result
        if grid and not (m == "none" and task == "lm"):  # the frozen model has no lr to pick
            tried = {lr: run_one(cfg, task, m, seeds[0], lr) for lr in grid}
            metric = metric or tried[grid[0]]["metric"]
            lr = max(grid, key=lambda x: score(tried[x], metric))
        else:
            lr = cfg.lr or defaults.lr_of(task, m)
        runs = [tried[lr] if lr in tried and s == seeds[0] else run_one(cfg, task, m, s, lr if grid else None)
                for s in seeds]
        metric = metric or runs[0]["metric"]
        for s, r in zip(seeds, runs):
            r["seed"] = s
        rows.append(make_row(m, lr, runs, measure(cfg, task, m), {f"{x:g}": tried[x].get(metric) for x in tried}))
    metrics = [k for k in rows[-1] if isinstance(rows[-1][k], dict) and "mean" in rows[-1][k]]
    metrics = sorted(metrics, key=lambda k: (k != metric, k))  # the main metric first
    md = table(rows, metrics, task, seeds, grid)
    atomic_text(os.path.join(cfg.out, "compare.json"), json.dumps(rows, indent=1))
    atomic_text(os.path.join(cfg.out, "compare.md"), md)
    if plot(rows, metric, task, os.path.join(cfg.out, "compare.png")):
        print(f"wrote {cfg.out}/compare.json, compare.md, compare.png", file=sys.stderr)
    else:
        print(f"wrote {cfg.out}/compare.json, compare.md", file=sys.stderr)
    print(md)
    finite = lambda v: round(v, 4) if math.isfinite(v) else None  # strict JSON: no NaN
    print(json.dumps({r["method"]: {k: finite(r[k]["mean"]) for k in metrics if k in r} for r in rows}))
    return rows
