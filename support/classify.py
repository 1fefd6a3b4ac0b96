"""Sequence classification on an encoder (RoBERTa/BERT): the ReFT paper's GLUE setting (eq. 5-6, Table 4).

The method and a new head on the first token train together; the head's parameters are counted apart from the
method's, as the paper does. Data: a text (or a text pair) and a label per record, from .jsonl/.csv/.tsv or GLUE's
own TSVs. The whole input is the "prompt", so "fA" positions are its first A tokens from <s>/[CLS] (the paper's GLUE
setting), and PEDRO's generators read its first token (`--pooling mean`: all of it). `train.py --task classify`
(inferred from labelled data) calls `train_classifier`; `--load RUN --eval-data FILE` calls
`evaluate_saved_classifier`.
"""
import csv
import io
import json
import math
import os
import sys
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F

import model as M
import reft
import train
from data import collate, split_heldout
from support import defaults, distributed, files, runs
from support.records import check_text, read_jsonl, read_text
from support.saving import load, save

# -----------------------------------------------------------------------------------------------------------------
# Data

# Columns, first match wins. Our own files: text [, text_pair] and label, or score for a regression target (STS-B).
# GLUE's TSVs (MNLI, MRPC, QNLI, QQP, RTE, SST-2, STS-B) use the other names; CoLA's have no header (4 columns).
TEXT_COLUMNS = [("#1 String", "#2 String"), ("question1", "question2"), ("question", "sentence"),
                ("sentence1", "sentence2"), ("premise", "hypothesis"), ("text", "text_pair"), ("sentence", None),
                ("text", None)]
LABEL_COLUMNS = ["label", "gold_label", "Quality", "is_duplicate", "score"]
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]
GLUE_TASKS = {("sentence1", "gold_label"): "mnli", ("#1 String", "Quality"): "mrpc", ("question", "label"): "qnli",
              ("question1", "is_duplicate"): "qqp", ("sentence1", "label"): "rte", ("sentence", "label"): "sst2",
              ("sentence1", "score"): "stsb"}  # (text column, label column) -> GLUE task (rte's layout is WNLI's too)
MAIN_METRIC = {"cola": "mcc", "stsb": "pearson"}  # the paper's metric per task (accuracy for the others)


def _rows(path: str) -> tuple[list[str], list[tuple[dict, str]]]:
    """The columns and (row, "file:line") pairs of a .jsonl, .csv or .tsv file (TSV as GLUE writes it: no quoting)."""
    if path.endswith(".jsonl"):
        rows = read_jsonl(path)
        return (list(rows[0][0]) if rows and isinstance(rows[0][0], dict) else []), rows
    if not path.endswith((".csv", ".tsv")):
        raise ValueError(f"{path}: classification data must be .jsonl, .csv or .tsv")
    reader = csv.reader(io.StringIO(read_text(path), newline=""), **(
        {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.endswith(".tsv") else {}))
    try:
        lines = list(reader)
    except csv.Error as e:  # a field over csv.field_size_limit(), a NUL byte, ...
        raise ValueError(f"{path}:{reader.line_num}: {e}") from None
    if lines and len(lines[0]) == 4 and lines[0][1] in ("0", "1"):  # CoLA: data from the first line on
        lines = [COLA_COLUMNS] + lines
    head = lines[0] if lines else []
    rows = [(dict(zip(head, row)), f"{path}:{n}") for n, row in enumerate(lines[1:], 2) if len(row) == len(head)]
    if len(rows) < len(lines) - 1:  # GLUE's QQP and MNLI hold a few broken lines
        print(f"warning: {path}: {len(lines) - 1 - len(rows)} row(s) with a wrong field count skipped", file=sys.stderr)
    return head, rows


def read_classification(path: str, like: dict | None = None) -> tuple[list[dict], dict]:
    """Records {text, pair (None for single texts), label (str; float for regression), where} and the task
    {name, pair, regression, metric}. `like`: the training task, which this (evaluation) file must match."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    columns, rows = _rows(path)
    if not rows:
        raise ValueError(f"{path}: no records")
    text, pair = next(((t, p) for t, p in TEXT_COLUMNS if t in columns and (p is None or p in columns)), (None, None))
    label = next((c for c in LABEL_COLUMNS if c in columns), None)
    if text is None or label is None:
        raise ValueError(f"{path}: no {'text' if text is None else 'label'} column (columns: {', '.join(columns)}); "
                         "expected text [, text_pair] and label (or score for regression), or a GLUE TSV")
    name = "cola" if columns == COLA_COLUMNS else GLUE_TASKS.get((text, label), "custom")
    task = {"name": name, "pair": pair is not None, "regression": label == "score",
            "metric": MAIN_METRIC.get(name, "pearson" if label == "score" else "accuracy")}
    if like is not None and (like["pair"], like["regression"]) != (task["pair"], task["regression"]):
        kind = lambda t: ("text pairs" if t["pair"] else "single texts") + (" with scores" if t["regression"] else "")
        raise ValueError(f"{path} holds {kind(task)}, but the run was trained on {kind(like)}")
    records = []
    for row, where in rows:
        for col in (text, pair, label) if pair else (text, label):
            if not isinstance(row, dict) or row.get(col) in (None, ""):
                raise ValueError(f"{where}: missing or empty {col!r}" + (col == pair) * " (a pair task: two texts)")
        if not pair and row.get("text_pair"):
            raise ValueError(f"{where}: a text_pair, but the first record has a single text (mixed tasks)")
        records.append({"text": check_text(row[text], where, text),
                        "pair": check_text(row[pair], where, pair) if pair else None,
                        "label": label_value(row[label], task["regression"], where), "where": where})
    return records, task


def label_value(value, regression: bool, where: str):
    """A class name (a string or an integer: "positive", 1) or a score (a finite number, or a string of one)."""
    if regression:
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            y = float(value)
        except (ValueError, OverflowError):
            raise ValueError(f"{where}: score {value!r} is not a number") from None
        if not math.isfinite(y):
            raise ValueError(f"{where}: score {value!r} is not a finite number")
        return y
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: label {value!r} must be a class name (a string) or a class number (an integer)")
    return check_text(str(value), where, "label")


def is_classification_file(path: str) -> bool:
    """Whether --data holds classification data (.csv/.tsv, or .jsonl records with a label or score)."""
    if path.endswith((".csv", ".tsv")):
        return True
    try:
        first = json.loads(next(line for line in read_text(path).split("\n") if line.strip()))
    except (OSError, ValueError, StopIteration, RecursionError):
        return False  # not ours: the instruction reader gives the error
    return isinstance(first, dict) and ("label" in first or "score" in first)


def label_names(records: list[dict], task: dict) -> list[str]:
    """Class names in id order: sorted (numerically when all are numbers); [] for regression (one output)."""
    if task["regression"]:
        return []
    names = {r["label"] for r in records}
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def subsample(items: list, n: int, seed: int) -> list:
    """At most n items (0 = all): a seeded random choice, kept in file order."""
    if not n or n >= len(items):
        return items
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return [items[i] for i in keep.tolist()]


def encode_classification(records: list[dict], tok, labels: list[str], max_length: int) -> list[dict]:
    """Each record -> {input_ids, token_type_ids, prompt_len (the whole input), label (class id or score), record}.
    Inputs longer than max_length keep their first max_length - 1 tokens and the final separator (counted)."""
    index, out, cut = {name: i for i, name in enumerate(labels)}, [], 0
    for r in records:
        if labels and r["label"] not in index:
            raise ValueError(f"{r['where']}: label {r['label']!r} is not one of the trained labels {labels}")
        ids, types = tok.encode_pair(r["text"], r["pair"])
        if len(ids) > max_length:
            cut, ids, types = cut + 1, ids[:max_length - 1] + ids[-1:], types[:max_length - 1] + types[-1:]
        out.append({"input_ids": ids, "token_type_ids": types, "prompt_len": len(ids), "record": r,
                    "label": index[r["label"]] if labels else r["label"]})
    if cut:
        print(f"warning: {cut} input(s) cut to max_length={max_length}", file=sys.stderr)
    return out


def group_by_length(order: torch.Tensor, lengths: list[int], per_step: int, generator: torch.Generator,
                    steps: int = 50) -> torch.Tensor:
    """--group-by-length: the shuffled order cut into blocks of `steps` optimizer steps; each block sorted by length
    and cut into steps, which are then shuffled within the block. A step's inputs have similar lengths (little
    padding, so less work), every example is still seen once an epoch, and the steps' order stays random (a short last
    step stays last). transformers' LengthGroupedSampler does the same with blocks of 50 batches."""
    out = []
    for block in order.split(per_step * steps):
        block = block[torch.tensor([lengths[i] for i in block.tolist()]).argsort(descending=True, stable=True)]
        chunks = list(block.split(per_step))
        full = [c for c in chunks if len(c) == per_step]
        out += [full[k] for k in torch.randperm(len(full), generator=generator).tolist()] + chunks[len(full):]
    return torch.cat(out)


def collate_classification(examples: list[dict], pad_id: int, scheme: reft.PositionScheme | None = None) -> dict:
    """collate's input_ids, attention_mask, prompt_mask (= attention_mask) and positions, right-padded, plus
    token_type_ids [B, T] (0 on padding) and labels [B] (long class ids, or float scores)."""
    batch = collate(examples, pad_id, scheme, padding_side="right", with_labels=False)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    for i, e in enumerate(examples):
        batch["token_type_ids"][i, :len(e["token_type_ids"])] = torch.tensor(e["token_type_ids"])
    labels = [e["label"] for e in examples]
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    return batch

# -----------------------------------------------------------------------------------------------------------------
# Training and evaluation (train.py's helpers: config, device, schedule; imported late, train.py imports this file)


def classifier_logits(model, method, batch):
    """[B, num_labels] from the first token's last hidden state (model.classify), whatever the method."""
    hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], method=method,
                   positions=batch.get("positions"), prompt_mask=batch["prompt_mask"])  # [B, T, d]
    return model.classify(hidden).float()


def classification_loss(logits, labels, reduction: str = "mean"):
    """Cross-entropy over the classes; MSE on the single output of a regression task (float labels, STS-B)."""
    if labels.is_floating_point():
        return F.mse_loss(logits[:, 0], labels, reduction=reduction)
    return F.cross_entropy(logits, labels, reduction=reduction)


def _pearson(x, y) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float(x @ y) / den if den else 0.0  # a constant input has no correlation: 0 by convention


def _ranks(x):
    """Ranks 0..n-1, tied values sharing the mean of their ranks (scipy.stats.rankdata - 1)."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)  # sorted distinct values
    first = counts.cumsum(0) - counts  # rank of the first member of each distinct value
    return (first + (counts - 1) / 2).to(x.dtype)[inverse]


def classification_metrics(pred: list, gold: list, num_labels: int) -> dict:
    """Accuracy (and, with 2 classes, F1 of class 1 and Matthews correlation); with 1 output (regression) Pearson and
    Spearman correlation (Pearson of the ranks)."""
    p, g = torch.tensor(pred, dtype=torch.float64), torch.tensor(gold, dtype=torch.float64)
    if num_labels == 1:
        return {"pearson": _pearson(p, g), "spearman": _pearson(_ranks(p), _ranks(g))}
    out = {"accuracy": float((p == g).double().mean())}
    if num_labels == 2:
        tp, tn = int(((p == 1) & (g == 1)).sum()), int(((p == 0) & (g == 0)).sum())
        fp, fn = int(((p == 1) & (g == 0)).sum()), int(((p == 0) & (g == 1)).sum())
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["mcc"] = (tp * tn - fp * fn) / den if den else 0.0
    return out


@torch.no_grad()
def evaluate_classifier(model, tok, method, mcfg, examples, labels, cfg) -> tuple[dict, list]:
    """Metrics over examples (and "n") and the predictions: class ids, or scores for regression."""
    model.eval(), method.eval()
    preds = []
    for i in range(0, len(examples), cfg.batch_size):
        b = collate_classification(examples[i:i + cfg.batch_size], tok.pad_id, mcfg.position_scheme())
        with train.autocast(cfg.device):
            logits = classifier_logits(model, method, train.to_device(b, cfg.device))
        preds += (logits.argmax(-1) if labels else logits[:, 0]).tolist()
    metrics = classification_metrics(preds, [e["label"] for e in examples], max(len(labels), 1))
    return {k: round(v, 4) for k, v in metrics.items()} | {"n": len(examples)}, preds


def write_predictions(path: str, examples, preds, labels):
    """One JSON line per example: text, text_pair, label, prediction (written atomically)."""
    files.atomic_text(path, "".join(json.dumps({"text": e["record"]["text"], "text_pair": e["record"]["pair"],
                                               "label": e["record"]["label"], "prediction": labels[p] if labels else p})
                                   + "\n" for e, p in zip(examples, preds)))


def classification_data(cfg, tok, max_length: int):
    """(train examples, eval examples, task, labels) from --data and --eval-data (default: eval_fraction of --data)."""
    records, task = read_classification(cfg.data)
    records = subsample(records, cfg.max_examples, cfg.seed)
    labels = label_names(records, task)
    if not task["regression"] and len(labels) < 2:
        raise ValueError(f"{cfg.data}: every record has the label {labels[0]!r}: classification needs at least two "
                         "classes (a regression target goes in a score column)")
    if not cfg.eval_data:
        train_rec, eval_rec = split_heldout(records, cfg.eval_fraction, cfg.seed)
    else:
        train_rec, eval_rec = records, subsample(read_classification(cfg.eval_data, like=task)[0], cfg.max_examples,
                                                 cfg.seed)
    if not eval_rec:
        raise ValueError("no evaluation examples: pass --eval-data or a larger --eval-fraction")
    return (encode_classification(train_rec, tok, labels, max_length),
            encode_classification(eval_rec, tok, labels, max_length), task, labels)


def method_or_head_only(mcfg, model) -> reft.Method:
    """reft.build_method; --method none: no method (every seam a no-op), so the head alone trains on the frozen
    encoder: the floor a method must beat."""
    return reft.Method() if mcfg.method == "none" else reft.build_method(mcfg, model)


def train_classifier(cfg) -> dict:
    """Train the method and a new head through train.fit (the one training loop); after each epoch evaluate, and
    keep (save) the epoch with the best task metric on the eval data. One process (no torchrun here)."""
    torch.manual_seed(cfg.seed)
    cfg = defaults.resolve(cfg, "classify")  # --lr 0, --schedule auto: the method's own (none: 1e-2, linear)
    model, tok = train.load_model_and_tokenizer(cfg)
    if not isinstance(model, M.Encoder):
        if cfg.task == "auto":  # inferred from the data file: say why
            raise ValueError(f"{cfg.data} holds classification data (.csv/.tsv, or .jsonl records with a label), "
                             f"which needs an encoder (RoBERTa or BERT), and {cfg.model} is a decoder; language-model "
                             "training reads .jsonl/.json records with prompt and response")
        raise ValueError(f"--task classify needs an encoder (RoBERTa or BERT); {cfg.model} is a decoder")
    train_ex, eval_ex, task, labels = classification_data(cfg, tok, min(cfg.max_length, model.config.max_length))
    mcfg = train.method_config(cfg, model, task="classify")
    ckpt_path, mcfg, info = runs.check_out_folder(cfg, mcfg)  # the same guard and --resume as language models
    method, scheme = method_or_head_only(mcfg, model), mcfg.position_scheme()
    print(runs.count_parameters(method, model), file=sys.stderr)
    head = model.add_classifier(max(len(labels), 1)).float()  # fp32 head: it trains, as the method does
    print(f"head params: {sum(p.numel() for p in head.parameters()):,} (trained, counted apart)", file=sys.stderr)
    # the method is never decayed (as train.train: the paper uses none); the head is, by --weight-decay
    opt = torch.optim.AdamW([{"params": list(method.parameters()), "weight_decay": 0.0},
                             {"params": list(head.parameters()), "weight_decay": cfg.weight_decay}], lr=cfg.lr,
                            foreach=True)
    sched = train.schedule(cfg, opt, len(train_ex))
    lengths, per_step = [len(e["input_ids"]) for e in train_ex], cfg.batch_size * cfg.grad_accum

    def by_length(order, epoch):  # --group-by-length: steps of similar lengths (less padding)
        return group_by_length(order, lengths, per_step, torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 1))

    def end_of_epoch(epoch, step):  # evaluate; the best epoch so far is saved (reft.pt, predictions.jsonl)
        metrics, preds = evaluate_classifier(model, tok, method, mcfg, eval_ex, labels, cfg)
        print(f"epoch {epoch + 1}/{cfg.epochs} step {step} | eval {metrics}", file=sys.stderr)
        best = fit_task.state.get("best")
        if best is None or metrics[task["metric"]] > best[task["metric"]]:
            fit_task.state["best"] = metrics | {"epoch": epoch + 1}
            save(cfg.out, method, mcfg, model, extra={"train_config": info["train_config"], "task": task,
                                                      "labels": labels, "head": head.state_dict()})
            write_predictions(os.path.join(cfg.out, "predictions.jsonl"), eval_ex, preds, labels)
    fit_task = train.Task(train_ex, lambda ex: train.to_device(collate_classification(ex, tok.pad_id, scheme),
                                                               cfg.device),
                          lambda b: classification_loss(classifier_logits(model, method, b), b["labels"], "sum"),
                          lambda b: len(b["labels"]), {"method": method, "head": head}, model, train_base=True,
                          order=by_length if cfg.group_by_length else None, end_of_epoch=end_of_epoch)
    start = runs.load_checkpoint(ckpt_path, fit_task, opt, sched, mcfg.method) if cfg.resume else (0, 0, 0)
    step, stopped, curve = train.fit(cfg, fit_task, opt, sched, ckpt_path, {"config": asdict(mcfg), **info},
                                     distributed.Single(), start)
    if stopped:
        print(f"stopped after {step} steps ({stopped}); continue with the same command and --resume", file=sys.stderr)
        return {"step": step, "stopped": stopped}
    best = fit_task.state["best"]
    print(f"saved {cfg.out}/reft.pt and predictions.jsonl (epoch {best['epoch']}, best {task['metric']})",
          file=sys.stderr)
    print(runs.metrics_line(best))  # the last stdout line: metrics for scripts (strict JSON)
    return best | {"curve": curve, "metric": task["metric"]}


def evaluate_saved_classifier(cfg) -> dict:
    """--load RUN --eval-data FILE: the saved method and head on FILE, with the labels they were trained on."""
    if not cfg.eval_data:
        raise ValueError("--load RUN --task classify evaluates a saved run: pass --eval-data FILE")
    out = os.path.join(cfg.load, f"predictions_{os.path.splitext(os.path.basename(cfg.eval_data))[0]}.jsonl")
    files.refuse_overwrite(out, cfg.overwrite)  # a file the user has is replaced only with --overwrite
    model, tok = train.load_model_and_tokenizer(cfg)
    method, mcfg, blob = load(cfg.load, model)
    if "head" not in blob:
        raise ValueError(f"{cfg.load} has no classification head (it was not trained with --task classify)")
    labels, task = blob["labels"], blob["task"]
    model.add_classifier(max(len(labels), 1)).float().load_state_dict(blob["head"])
    records = subsample(read_classification(cfg.eval_data, like=task)[0], cfg.max_examples, cfg.seed)
    max_length = min(blob["train_config"]["max_length"], model.config.max_length)
    examples = encode_classification(records, tok, labels, max_length)
    metrics, preds = evaluate_classifier(model, tok, method, mcfg, examples, labels, cfg)
    write_predictions(out, examples, preds, labels)
    print(f"predictions: {out}", file=sys.stderr)
    print(runs.metrics_line(metrics))
    return metrics
