"""
train.py: train a ReFT method on a frozen model, evaluate it, and generate with a saved one.

  python train.py --model stories260K --tokenizer tok512.model --data examples/steer.jsonl --method loreft --out runs/x
  python train.py --model stories260K --tokenizer tok512.model --load runs/x --prompt "Lily had a red ball."
Sequence classification on an encoder (RoBERTa/BERT; --task classify, inferred from labelled data):
  python train.py --model MINILM_DIR --data examples/sentiment_train.jsonl --eval-data examples/sentiment_dev.jsonl \
      --method loreft --positions f3 --rank 1 --epochs 3 --batch-size 16 --out runs/sentiment
  python train.py --model MINILM_DIR --load runs/sentiment --eval-data examples/sentiment_dev.jsonl

Every flag is a field of TrainConfig below (--grad-accum sets grad_accum, and so on).
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

import model as M
import reft
from data import collate, load_tokenizer, read_records, response_of, split_heldout, tokenize_examples, format_prompt
from data import (collate_classification, encode_classification, is_classification_file, label_names,
                  read_classification, subsample)


@dataclass
class TrainConfig:
    model: str = ""  # HF folder, llama2.c .bin/.pt, or a public name (stories260K)
    tokenizer: str = ""  # tokenizer file/folder (default: the model folder)
    data: str = ""  # training records (.jsonl / .json; classification: .jsonl / .csv / .tsv)
    eval_data: str = ""  # held-out records (default: eval_fraction of --data)
    eval_fraction: float = 0.1  # share of --data held out when --eval-data is not given
    template: str = "auto"  # prompt template: auto | raw | alpaca | plain (see data.format_prompt)
    task: str = "auto"  # lm | classify | auto (classify for .csv/.tsv or labelled .jsonl data, or --load + --eval-data)
    max_examples: int = 0  # classify: at most N examples from each data file (a seeded sample; 0 = all)
    method: str = "loreft"  # loreft | direft | prefix | pedro
    layers: str = "all"  # "all" or comma-separated block indices
    positions: str = ""  # ReFT: first A and last B prompt tokens; "" = the task's default (DEFAULT_POSITIONS)
    share_weights: bool = False  # ReFT: one intervention for both position groups
    rank: int = 8  # ReFT rank; PEDRO bottleneck
    dropout: float = 0.0  # ReFT dropout on the intervention output
    act_fn: str = "linear"  # ReFT activation on W h + b: linear | relu | gelu | silu | tanh (reft.ACTIVATIONS)
    num_virtual_tokens: int = 8  # prefix-tuning: P
    prefix_projection: bool = False  # prefix-tuning: train through the MLP reparametrization
    pooling: str = "last"  # PEDRO pooling: last | mean
    epochs: int = 10
    lr: float = 1e-2  # for the tiny model; the ReFT paper used 9e-4 on LLaMA-7B
    weight_decay: float = 0.0  # never applied to the method's parameters (see reft.LoReFT)
    warmup: float = 0.1  # fraction of steps with linear warm-up, then linear decay to 0
    batch_size: int = 8
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0
    max_length: int = 256  # tokens per example (prompt + response + EOS)
    max_steps: int = 0  # stop after this many optimizer steps (0 = all); the run can be resumed later
    save_every: int = 0  # also write checkpoint.pt every N optimizer steps (0 = only at the end of each epoch)
    seed: int = 0
    out: str = "runs/reft"  # output folder: reft.pt (the method) and checkpoint.pt (to resume)
    resume: bool = False  # continue from out/checkpoint.pt
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    load: str = ""  # generate with a saved method (ours, or a pyreft folder with --positions)
    prompt: str = ""  # prompt for --load (formatted with --template)
    prompts_file: str = ""  # one prompt per line, generated as a batch
    max_new_tokens: int = 32


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            p.add_argument(flag, action="store_true")
        else:
            p.add_argument(flag, type=f.type, default=f.default)
    return TrainConfig(**vars(p.parse_args(argv)))


# ReFT positions when --positions is not given: the quick start's f3+l3 for language modelling; the first 3 tokens
# of the encoder's input for classification (the ReFT paper's GLUE setting)
DEFAULT_POSITIONS = {"lm": "f3+l3", "classify": "f3"}


def method_config(cfg: TrainConfig, model, task: str = "lm") -> reft.MethodConfig:
    return reft.MethodConfig(method=cfg.method, layers=reft.parse_layers(cfg.layers, model.config.num_hidden_layers),
                             positions=cfg.positions or DEFAULT_POSITIONS[task], share_weights=cfg.share_weights,
                             rank=cfg.rank, dropout=cfg.dropout, act_fn=cfg.act_fn,
                             num_virtual_tokens=cfg.num_virtual_tokens, prefix_projection=cfg.prefix_projection,
                             pooling=cfg.pooling)


def position_args(mcfg: reft.MethodConfig) -> dict:
    """first/last/share for data.collate: ReFT methods need positions, the others none."""
    if mcfg.method not in ("loreft", "direft"):
        return {}
    first, last = reft.parse_positions(mcfg.positions)
    return {"first": first, "last": last, "share_weights": mcfg.share_weights}


def lm_loss(model, method, batch, reduction: str = "mean"):
    """Cross-entropy over response tokens (+ EOS), their "mean" or "sum": the prediction at t is scored against the
    token at t+1."""
    logits = model(batch["input_ids"], batch["attention_mask"], method=method, positions=batch.get("positions"),
                   prompt_mask=batch["prompt_mask"])
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100,
                           reduction=reduction)


def num_loss_tokens(batch) -> int:
    """How many tokens lm_loss scores in the batch."""
    return int((batch["labels"][:, 1:] != -100).sum())


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def lr_factor(step: int, warm: int, total: int) -> float:
    """The learning rate of optimizer step `step` (0-based) over --lr: linear warm-up from 1/(warm+1) to 1 at step
    `warm`, then linear decay that would reach 0 at step `total` (the last step, total-1, gets 1/(total-warm))."""
    return (step + 1) / (warm + 1) if step < warm else max(0.0, (total - step) / max(1, total - warm))


@torch.no_grad()
def generate_ids(model, tok, method, mcfg, examples, max_new_tokens, device, batch_size=32) -> list[list[int]]:
    """Greedy continuations (token ids, up to the end token) of the examples' prompts, in left-padded batches."""
    outs, end = [], end_token(model, tok)
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i:i + batch_size], tok.pad_id, padding_side="left", with_labels=False,
                    **position_args(mcfg))
        b = to_device(b, device)
        out = M.generate(model, b["input_ids"], b["attention_mask"], max_new_tokens, eos_id=end,
                         method=method, positions=b.get("positions"))
        outs += [[t for t in row.tolist() if t != end] for row in out]
    return outs


def generate_batch(model, tok, method, mcfg, examples, max_new_tokens, device) -> list[str]:
    return [tok.decode(ids) for ids in generate_ids(model, tok, method, mcfg, examples, max_new_tokens, device)]


def end_token(model, tok) -> int:
    """The model's end-of-sequence id (llama2.c models end stories with BOS), else the tokenizer's."""
    eos = getattr(model.config, "eos_token_id", None)
    return (eos[0] if isinstance(eos, list) else eos) if eos is not None else tok.eos_id


def evaluate(model, tok, method, mcfg, examples, cfg, device) -> dict:
    """Held-out loss and exact match of greedy generations against the reference responses (stripped)."""
    method.eval()
    losses = []
    with torch.no_grad(), autocast(device):
        for i in range(0, len(examples), cfg.batch_size):
            b = collate(examples[i:i + cfg.batch_size], tok.pad_id, **position_args(mcfg))
            losses.append(lm_loss(model, method, to_device(b, device)).item())
        preds = generate_batch(model, tok, method, mcfg, examples, cfg.max_new_tokens, device)
    refs = [response_of(e["record"]) for e in examples]
    em = sum(p.strip() == r.strip() for p, r in zip(preds, refs)) / max(len(refs), 1)
    method.train()
    return {"eval_loss": sum(losses) / max(len(losses), 1), "exact_match": em, "n": len(examples), "preds": preds}


def autocast(device: str):
    """bf16 autocast on CUDA; plain fp32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)


def load_model_and_tokenizer(cfg: TrainConfig):
    dtype = torch.bfloat16 if cfg.device.startswith("cuda") else torch.float32
    model = M.from_pretrained(cfg.model, dtype=dtype, device=cfg.device)
    model.requires_grad_(False)  # the base stays frozen: only the method trains
    tok_path = cfg.tokenizer or M.resolve(cfg.model)
    if not os.path.isdir(tok_path) and not cfg.tokenizer:
        raise ValueError("a llama2.c checkpoint needs --tokenizer (e.g. tok512.model for stories260K)")
    return model, load_tokenizer(M.resolve(tok_path))


def train(cfg: TrainConfig) -> dict:
    ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
    if cfg.resume and not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"--resume: no checkpoint.pt in {cfg.out}")
    torch.manual_seed(cfg.seed)
    model, tok = load_model_and_tokenizer(cfg)
    mcfg = method_config(cfg, model)
    eos = end_token(model, tok)
    examples = tokenize_examples(read_records(cfg.data), tok, cfg.template, cfg.max_length, eos)
    if cfg.eval_data:
        train_ex, eval_ex = examples, tokenize_examples(read_records(cfg.eval_data), tok, cfg.template,
                                                        cfg.max_length, eos)
    else:
        train_ex, eval_ex = split_heldout(examples, cfg.eval_fraction, cfg.seed)
    method = reft.build_method(mcfg, model)
    method.train()
    print(reft.count_parameters(method, model), file=sys.stderr)
    # AdamW over the method's parameters only, none of them decayed (weight decay would shrink LoReFT's R)
    # (foreach: one multi-tensor update rather than a Python loop over the tensors, as PyTorch does by default on CUDA)
    opt = torch.optim.AdamW([{"params": list(method.parameters()), "weight_decay": 0.0}], lr=cfg.lr, foreach=True)
    steps_per_epoch = math.ceil(len(train_ex) / (cfg.batch_size * cfg.grad_accum))
    total = steps_per_epoch * cfg.epochs
    warm = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, total))
    step, start_epoch, start_batch = 0, 0, 0
    if cfg.resume:  # everything needed to continue exactly where the run stopped
        ck = torch.load(ckpt_path, map_location=cfg.device, weights_only=False)
        method.load_state_dict(ck["method"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        step, start_epoch, start_batch = ck["step"], ck["epoch"], ck["batch"]
        torch.set_rng_state(ck["rng"])
        print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    pos_args = position_args(mcfg)
    micro = cfg.batch_size
    t0, tokens, stopped, first_step = time.time(), 0, False, step
    for epoch in range(start_epoch, cfg.epochs):
        order = torch.randperm(len(train_ex), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        batches = [order[i:i + micro].tolist() for i in range(0, len(order), micro)]
        for bi in range(start_batch if epoch == start_epoch else 0, len(batches), cfg.grad_accum):
            group = [to_device(collate([train_ex[i] for i in idx], tok.pad_id, **pos_args), cfg.device)
                     for idx in batches[bi:bi + cfg.grad_accum]]
            # the step's loss is the mean over all its response tokens, whatever micro-batch they fall in
            n_loss, loss = max(sum(num_loss_tokens(b) for b in group), 1), 0.0
            for b in group:
                with autocast(cfg.device):
                    part = lm_loss(model, method, b, reduction="sum") / n_loss
                part.backward()
                loss += part.detach()
                tokens += int(b["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.max_grad_norm)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
            step += 1
            if step % 10 == 0 or step == total:
                el = time.time() - t0
                eta = el / max(step - first_step, 1) * (total - step)
                print(f"epoch {epoch + 1}/{cfg.epochs} step {step}/{total} | loss {loss.item():.4f} | "
                      f"lr {sched.get_last_lr()[0]:.2e} | {tokens / el:,.0f} tok/s | eta {eta:.0f}s", file=sys.stderr)
            if cfg.max_steps and step >= cfg.max_steps:
                stopped = True
                save_checkpoint(ckpt_path, method, opt, sched, step, epoch, bi + len(group))
                break
            if cfg.save_every > 0 and step % cfg.save_every == 0:  # a crash now loses at most save_every steps
                save_checkpoint(ckpt_path, method, opt, sched, step, epoch, bi + len(group))
        if stopped:
            break
        save_checkpoint(ckpt_path, method, opt, sched, step, epoch + 1, 0)
    reft.save(cfg.out, method, mcfg, model, extra={"train_config": asdict(cfg)})
    if stopped:
        print(f"stopped after {step} steps (--max-steps); continue with --resume", file=sys.stderr)
        return {"step": step}
    result = evaluate(model, tok, method, mcfg, eval_ex, cfg, cfg.device) if eval_ex else {}
    show_examples(model, tok, method, mcfg, eval_ex[:3], result.get("preds", []), cfg)
    result.pop("preds", None)
    print(f"saved {cfg.out}/reft.pt", file=sys.stderr)
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))  # the last stdout line: metrics for scripts
    return result


def save_checkpoint(path, method, opt, sched, step, epoch, batch):
    reft.atomic_torch_save({"method": method.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step, "epoch": epoch, "batch": batch, "rng": torch.get_rng_state()}, path)


def show_examples(model, tok, method, mcfg, examples, preds, cfg):
    """A few held-out prompts with the frozen model's continuation and the trained method's."""
    base = generate_batch(model, tok, None, mcfg, examples, cfg.max_new_tokens, cfg.device)
    for e, b, p in zip(examples, base, preds):
        print(f"prompt: {tok.decode(e['input_ids'][:e['prompt_len']])!r}\n  base:   {b!r}\n  {mcfg.method}: {p!r}")


def generate_with_saved(cfg: TrainConfig):
    if not os.path.isdir(cfg.load):
        raise FileNotFoundError(f"--load {cfg.load}: no such folder (a train.py --out folder or a pyreft save)")
    ours = os.path.exists(os.path.join(cfg.load, "reft.pt"))
    if not ours and not cfg.positions:  # a pyreft folder: positions are not saved there, so they come from --positions
        raise ValueError("a pyreft folder does not store positions: pass the --positions it was trained with "
                         "(e.g. --positions f1+l1)")
    model, tok = load_model_and_tokenizer(cfg)
    if ours:
        method, mcfg, blob = reft.load(cfg.load, model)
        template = blob.get("train_config", {}).get("template", cfg.template)
    else:
        method, mcfg = reft.load_pyreft(cfg.load, model, cfg.positions)
        template = cfg.template
    method.eval()
    prompts = [cfg.prompt] if not cfg.prompts_file else \
        [line.rstrip("\n") for line in open(cfg.prompts_file, encoding="utf-8") if line.strip()]
    examples = []
    for text in prompts:
        ids = tok.encode(format_prompt({"prompt": text}, template), bos=True)
        examples.append({"input_ids": ids, "prompt_len": len(ids)})
    outs = generate_ids(model, tok, method, mcfg, examples, cfg.max_new_tokens, cfg.device)
    for text, e, ids in zip(prompts, examples, outs):  # decode prompt + continuation together: exact spacing
        print(tok.decode(e["input_ids"] + ids) if not cfg.prompts_file else f"{text}\t{tok.decode(ids)}")


# -----------------------------------------------------------------------------------------------------------------
# Sequence classification on an encoder (RoBERTa/BERT): the method and a new head on the first token train together
# (ReFT eq. 5-6, GLUE in Table 4); the head's parameters are counted apart from the method's, as the paper does.


def classifier_logits(model, method, batch):
    """[B, num_labels] from the first token's last hidden state (model.classify); PEDRO pools over the whole input."""
    hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], method=method,
                   positions=batch.get("positions"), prompt_mask=batch["prompt_mask"])  # [B, T, d]
    return model.classify(hidden).float()


def classification_loss(logits, labels):
    """Cross-entropy over the classes; MSE on the single output of a regression task (float labels, STS-B)."""
    return F.mse_loss(logits[:, 0], labels) if labels.is_floating_point() else F.cross_entropy(logits, labels)


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
        b = collate_classification(examples[i:i + cfg.batch_size], tok.pad_id, **position_args(mcfg))
        with autocast(cfg.device):
            logits = classifier_logits(model, method, to_device(b, cfg.device))
        preds += (logits.argmax(-1) if labels else logits[:, 0]).tolist()
    metrics = classification_metrics(preds, [e["label"] for e in examples], max(len(labels), 1))
    return {k: round(v, 4) for k, v in metrics.items()} | {"n": len(examples)}, preds


def write_predictions(path: str, examples, preds, labels):
    with open(path, "w", encoding="utf-8") as f:
        for e, p in zip(examples, preds):
            r = e["record"]
            f.write(json.dumps({"text": r["text"], "text_pair": r["pair"], "label": r["label"],
                                "prediction": labels[p] if labels else p}) + "\n")


def classification_data(cfg: TrainConfig, tok, max_length: int):
    """(train examples, eval examples, task, labels) from --data and --eval-data (default: eval_fraction of --data)."""
    records, task = read_classification(cfg.data)
    records = subsample(records, cfg.max_examples, cfg.seed)
    labels = label_names(records, task)
    if not cfg.eval_data:
        train_rec, eval_rec = split_heldout(records, cfg.eval_fraction, cfg.seed)
    else:
        train_rec, eval_rec = records, subsample(read_classification(cfg.eval_data, like=task)[0], cfg.max_examples,
                                                 cfg.seed)
    if not eval_rec:
        raise ValueError("no evaluation examples: pass --eval-data or a larger --eval-fraction")
    return (encode_classification(train_rec, tok, labels, max_length),
            encode_classification(eval_rec, tok, labels, max_length), task, labels)


def train_classifier(cfg: TrainConfig) -> dict:
    """Train the method and a new head; keep (save) the epoch with the best task metric on the eval data."""
    torch.manual_seed(cfg.seed)
    model, tok = load_model_and_tokenizer(cfg)
    if not isinstance(model, M.Encoder):
        raise ValueError(f"--task classify needs an encoder (RoBERTa or BERT); {cfg.model} is a decoder")
    train_ex, eval_ex, task, labels = classification_data(cfg, tok, min(cfg.max_length, model.config.max_length))
    mcfg = method_config(cfg, model, task="classify")
    method = reft.build_method(mcfg, model)
    print(reft.count_parameters(method, model), file=sys.stderr)
    head = model.add_classifier(max(len(labels), 1)).float()  # fp32 head: it trains, as the method does
    print(f"head params: {sum(p.numel() for p in head.parameters()):,} (trained, counted apart)", file=sys.stderr)
    # the method is never decayed (it would shrink LoReFT's R); the head is, by --weight-decay
    opt = torch.optim.AdamW([{"params": list(method.parameters()), "weight_decay": 0.0},
                             {"params": list(head.parameters()), "weight_decay": cfg.weight_decay}], lr=cfg.lr,
                            foreach=True)
    per_step = cfg.batch_size * cfg.grad_accum
    total = math.ceil(len(train_ex) / per_step) * cfg.epochs
    warm = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, total))
    params, pos_args = list(method.parameters()) + list(head.parameters()), position_args(mcfg)
    best, t0, step = None, time.time(), 0
    for epoch in range(cfg.epochs):
        model.train(), method.train()  # dropout in the frozen encoder too, as pyreft's GLUE runs (model.train())
        order = torch.randperm(len(train_ex), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for start in range(0, len(order), per_step):
            step_ex = order[start:start + per_step]
            for idx in step_ex.split(cfg.batch_size):  # the step's loss: the mean over its examples
                b = to_device(collate_classification([train_ex[i] for i in idx.tolist()], tok.pad_id, **pos_args),
                              cfg.device)
                with autocast(cfg.device):
                    loss = classification_loss(classifier_logits(model, method, b), b["labels"])
                (loss * len(idx) / len(step_ex)).backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
            step += 1
            if step % 100 == 0:  # elapsed and eta include the per-epoch evaluations so far
                el = time.time() - t0
                print(f"epoch {epoch + 1}/{cfg.epochs} step {step}/{total} | loss {loss.item():.4f} | "
                      f"{el:.0f}s | eta {el / step * (total - step):.0f}s", file=sys.stderr)
        metrics, preds = evaluate_classifier(model, tok, method, mcfg, eval_ex, labels, cfg)
        print(f"epoch {epoch + 1}/{cfg.epochs} step {step}/{total} | loss {loss.item():.4f} | eval {metrics} | "
              f"{time.time() - t0:.0f}s", file=sys.stderr)
        if best is None or metrics[task["metric"]] > best[task["metric"]]:  # best epoch on the eval data: save it
            best = metrics | {"epoch": epoch + 1}
            reft.save(cfg.out, method, mcfg, model, extra={"train_config": asdict(cfg), "task": task,
                                                           "labels": labels, "head": head.state_dict()})
            write_predictions(os.path.join(cfg.out, "predictions.jsonl"), eval_ex, preds, labels)
    print(f"saved {cfg.out}/reft.pt and predictions.jsonl (epoch {best['epoch']}, best {task['metric']})",
          file=sys.stderr)
    print(json.dumps(best))  # the last stdout line: metrics for scripts
    return best


def evaluate_saved_classifier(cfg: TrainConfig) -> dict:
    """--load RUN --eval-data FILE: the saved method and head on FILE, with the labels they were trained on."""
    if not cfg.eval_data:
        raise ValueError("--load RUN --task classify evaluates a saved run: pass --eval-data FILE")
    model, tok = load_model_and_tokenizer(cfg)
    method, mcfg, blob = reft.load(cfg.load, model)
    if "head" not in blob:
        raise ValueError(f"{cfg.load} has no classification head (it was not trained with --task classify)")
    labels, task = blob["labels"], blob["task"]
    model.add_classifier(max(len(labels), 1)).float().load_state_dict(blob["head"])
    records = subsample(read_classification(cfg.eval_data, like=task)[0], cfg.max_examples, cfg.seed)
    max_length = min(blob["train_config"]["max_length"], model.config.max_length)
    examples = encode_classification(records, tok, labels, max_length)
    metrics, preds = evaluate_classifier(model, tok, method, mcfg, examples, labels, cfg)
    out = os.path.join(cfg.load, f"predictions_{os.path.splitext(os.path.basename(cfg.eval_data))[0]}.jsonl")
    write_predictions(out, examples, preds, labels)
    print(f"predictions: {out}", file=sys.stderr)
    print(json.dumps(metrics))
    return metrics


def task_of(cfg: TrainConfig) -> str:
    """--task, or inferred: classify for classification data, or for --load with --eval-data (and no prompt)."""
    if cfg.task not in ("auto", "lm", "classify"):
        raise ValueError(f"unknown --task {cfg.task!r}: expected lm, classify or auto")
    if cfg.task != "auto":
        return cfg.task
    if cfg.load:
        return "classify" if cfg.eval_data and not (cfg.prompt or cfg.prompts_file) else "lm"
    return "classify" if cfg.data and is_classification_file(cfg.data) else "lm"


def main(argv=None):
    cfg = parse_args(argv)
    try:
        if task_of(cfg) == "classify":
            evaluate_saved_classifier(cfg) if cfg.load else train_classifier(cfg)
        elif cfg.load:
            generate_with_saved(cfg)
        elif cfg.data:
            train(cfg)
        else:
            raise ValueError("nothing to do: pass --data FILE to train, or --load DIR --prompt TEXT to generate")
    except (ValueError, OSError) as e:  # bad input: one clear line, no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
