"""
train.py: train a method on a frozen model, evaluate it, and generate with a saved one.

  python train.py                     the quick start: LoReFT steers the shipped stories260K model (about 20 s on a CPU)
  python train.py --model stories260K --data examples/steer_train.jsonl --eval-data examples/steer_eval.jsonl \\
      --method loreft --out runs/steer
  python train.py --model stories260K --load runs/steer --prompt "Lily had a red ball."
Sequence classification on an encoder (--task classify, inferred from labelled data; the loop is in
support/classify.py):
  python train.py --model MINILM_DIR --data examples/sentiment_train.jsonl --eval-data examples/sentiment_dev.jsonl \\
      --method loreft --positions f3 --rank 4 --epochs 3 --batch-size 16 --out runs/sentiment

Every flag is a field of TrainConfig (--grad-accum sets grad_accum, and so on); `python train.py --help` lists them,
each field's comment as its help.
"""
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

import model as M
import reft
from data import collate, response_of, split_heldout, tokenize_examples, uses_chat
from support import defaults, distributed, flags, runs
from support.loading import end_token, load_model_and_tokenizer  # the frozen model, its tokenizer, the end token
from support.records import read_records
from support.saving import atomic_torch_save, save


@dataclass
class TrainConfig:
    model: str = ""  # HF folder, llama2.c .bin/.pt, or a public name (stories260K ships with the project)
    tokenizer: str = ""  # tokenizer file/folder (default: the model's folder; tok512.model for stories260K)
    data: str = ""  # training records (.jsonl/.json; classification: .jsonl/.csv/.tsv)
    eval_data: str = ""  # held-out records (default: eval_fraction of --data)
    eval_fraction: float = 0.1  # share of --data held out when --eval-data is not given
    template: str = "auto"  # prompt template: auto | raw | alpaca | plain | chat (the checkpoint's; data.prompt_ids)
    task: str = "auto"  # lm | classify | auto (classify for .csv/.tsv or labelled .jsonl data on an encoder)
    max_examples: int = 0  # classify: at most N examples from each data file (a seeded sample; 0 = all)
    group_by_length: bool = False  # classify: steps of similar lengths (less padding; support/classify.py)
    method: str = "loreft"  # loreft | direft | prefix | pedro | lora | none (the floor); comma-separated: a comparison
    layers: str = "all"  # "all" or comma-separated block indices
    positions: str = ""  # ReFT: fA+lB = first A and last B prompt tokens; "" = f3+l3 (lm) or f3 (classify)
    share_weights: bool = False  # ReFT: one intervention for both position groups (tied)
    rank: int = 8  # ReFT and LoRA rank r; PEDRO bottleneck width
    dropout: float = 0.0  # ReFT dropout on the intervention output; LoRA dropout on its input
    act_fn: str = "linear"  # ReFT activation on W h + b: linear | relu | gelu | silu | tanh
    rotation: str = "qr"  # LoReFT's R: qr (a free d×r matrix's Q factor) | householder (pyreft's parametrization)
    num_virtual_tokens: int = 8  # prefix-tuning: P
    prefix_projection: bool = False  # prefix-tuning: train through the paper's MLP reparametrization
    pooling: str = "last"  # PEDRO pooling: last | mean
    lora_alpha: float = 16.0  # LoRA: α; the update B A is scaled by α/r
    epochs: int = 10  # passes over the training data
    lr: float = 0.0  # peak learning rate; 0 = the method's default (support/defaults.py; the paper: 9e-4 on LLaMA-7B)
    weight_decay: float = 0.0  # AdamW weight decay of a classification head (never of the method)
    warmup: float = -1.0  # fraction of steps with linear warm-up (every schedule); < 0 = the method's (0.1 or 0)
    schedule: str = "auto"  # after the warm-up: linear (to 0) | cosine (to 0) | constant | auto (support/defaults.py)
    constant_lr: bool = False  # keep --lr at every step: no warm-up, no decay (= --schedule constant --warmup 0)
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping to this norm (0 = off)
    max_length: int = 256  # tokens per example (prompt + response + end); in generation, prompt + new tokens
    max_steps: int = 0  # stop after this many optimizer steps (0 = all); the run can be resumed later
    save_every: int = 0  # also write checkpoint.pt every N optimizer steps (0 = only at the end of each epoch)
    seed: int = 0  # initialisation, shuffling and the held-out split
    seeds: str = "auto"  # compare: runs per method, seeds seed, seed+1, ...; auto = 3 when comparing methods, else 1
    lr_grid: str = ""  # compare: comma-separated lrs; each method first keeps its best on the eval data
    out: str = "runs/reft"  # output folder: reft.pt (the method) and checkpoint.pt (to resume)
    resume: bool = False  # continue from out/checkpoint.pt
    overwrite: bool = False  # replace a run already saved in --out (and predictions already written)
    device: str = "cuda" if torch.cuda.is_available() else "cpu"  # cuda (bf16 autocast) or cpu (fp32)
    dist_timeout: int = 600  # torchrun: seconds a process waits for the others before the run stops with an error
    load: str = ""  # a saved run to generate with (ours, or a pyreft folder with --positions)
    prompt: str = ""  # prompt for --load (formatted with the run's template)
    prompts_file: str = ""  # one prompt per line, generated as a batch (prompt<TAB>continuation)
    max_new_tokens: int = 32  # tokens to generate per prompt


DEFAULT_POSITIONS = {"lm": "f3+l3", "classify": "f3"}  # lm: the quick start's; classify: the paper's GLUE "p3"


def parse_args(argv=None) -> TrainConfig:
    return flags.parse_args(TrainConfig, argv)  # one --flag per field, the comments above as help


def method_config(cfg: TrainConfig, model, task: str = "lm") -> reft.MethodConfig:
    return reft.MethodConfig(method=cfg.method, layers=reft.parse_layers(cfg.layers, model.config.num_hidden_layers),
                             positions=cfg.positions or DEFAULT_POSITIONS[task], share_weights=cfg.share_weights,
                             rank=cfg.rank, dropout=cfg.dropout, act_fn=cfg.act_fn, rotation=cfg.rotation,
                             num_virtual_tokens=cfg.num_virtual_tokens, prefix_projection=cfg.prefix_projection,
                             pooling=cfg.pooling, lora_alpha=cfg.lora_alpha)


def lm_loss(model, method, batch, reduction: str = "mean"):
    """Cross-entropy over the response tokens (+ end token) only, their "mean" or "sum" (ReFT eq. 4): the logits at
    position t predict token t+1, and labels are -100 on the prompt and padding."""
    ### BEGIN SOLUTION lm_loss
    logits = model(batch["input_ids"], batch["attention_mask"], method=method, positions=batch.get("positions"),
                   prompt_mask=batch["prompt_mask"])  # [B, T, vocab]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100,
                           reduction=reduction)
    ### END SOLUTION lm_loss


def num_loss_tokens(batch) -> int:
    """How many tokens lm_loss scores in the batch."""
    return int((batch["labels"][:, 1:] != -100).sum())


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def lr_factor(step: int, warm: int, total: int, shape: str = "linear") -> float:
    """The learning rate of optimizer step `step` (0-based) over --lr: linear warm-up from 1/(warm+1) to 1 at step
    `warm`, then with t = (step - warm) / (total - warm): linear 1 - t, cosine (1 + cos πt) / 2, or constant 1."""
    t = min(1.0, (step - warm) / max(1, total - warm))  # linear and cosine reach 0 at step `total` (after the last)
    return (step + 1) / (warm + 1) if step < warm else {"linear": 1 - t, "cosine": (1 + math.cos(math.pi * t)) / 2,
                                                         "constant": 1.0}[shape]


def autocast(device: str):
    """bf16 autocast on CUDA; plain fp32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)


# -----------------------------------------------------------------------------------------------------------------
# The training loop: one for every task. A task (language modelling below, classification in support/classify.py)
# supplies its examples, how a list of them becomes a batch, the loss and what trains; the loop does the rest.


@dataclass
class Task:
    examples: list  # the training examples
    batch: Callable[[list], dict]  # a list of examples -> a batch on the device
    loss: Callable[[dict], torch.Tensor]  # a batch -> its loss, summed over its items
    count: Callable[[dict], int]  # a batch -> how many items its loss sums over (response tokens, or examples)
    modules: dict  # what trains, saved in checkpoint.pt by name: {"method": ...} (+ "head" for classification)
    base: torch.nn.Module  # the frozen model
    train_base: bool = False  # the base in train mode (its dropout on), as pyreft's GLUE runs do for encoders
    order: Callable | None = None  # (the epoch's seeded order, epoch) -> another order (grouped by length, ...)
    end_of_epoch: Callable | None = None  # (epoch, step) -> None: classification evaluates, keeps the best epoch
    state: dict = field(default_factory=dict)  # what end_of_epoch keeps across a --resume (in checkpoint.pt)


def schedule(cfg: TrainConfig, opt, n_examples: int):
    """Linear warm-up over --warmup of the steps, then --schedule; --constant-lr: --lr throughout (no warm-up)."""
    total, shape = total_steps(cfg, n_examples), "constant" if cfg.constant_lr else cfg.schedule
    warm = 0 if cfg.constant_lr else int(cfg.warmup * total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, total, shape))


def total_steps(cfg: TrainConfig, n_examples: int) -> int:
    return math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum)) * cfg.epochs


def epoch_steps(cfg: TrainConfig, task: Task, epoch: int) -> list[list[list[int]]]:
    """The epoch's optimizer steps: the examples in a seeded order, cut into steps of batch_size × grad_accum
    examples, each cut into micro-batches of batch_size (example indices)."""
    order = torch.randperm(len(task.examples), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
    order = task.order(order, epoch) if task.order else order
    per_step, b = cfg.batch_size * cfg.grad_accum, cfg.batch_size
    return [[order[i + j:i + min(j + b, per_step)].tolist() for j in range(0, min(per_step, len(order) - i), b)]
            for i in range(0, len(order), per_step)]


def optimizer_step(cfg, task: Task, micro_batches, opt, sched, ddp, params, step: int, ckpt_path: str):
    """One step: forward and backward over the micro-batches (this process's share of each), gradients summed over
    processes, a NaN check, clipping, the update. -> (the step's loss over all processes, tokens seen here)."""
    shards = [ddp.shard(idx) for idx in micro_batches]  # all of idx in one process
    batches = [task.batch([task.examples[i] for i in idx]) for idx in shards if idx]
    # the step's loss is the mean over all its items, whatever micro-batch (or process) holds them
    n, loss = max(ddp.sum(sum(task.count(b) for b in batches)), 1), 0.0
    for b in batches:
        with autocast(cfg.device):
            part = task.loss(b) / n
        part.backward()
        loss += part.detach()
    ddp.count(sum(map(len, shards)))
    ddp.all_reduce_grads(params)  # summed over processes: the single-process gradient
    loss = ddp.sum(float(loss))  # the step's loss over all processes
    runs.check_finite(loss, step, ckpt_path)  # NaN/inf: stop before the update, keep the last checkpoint
    if cfg.max_grad_norm > 0:  # 0 turns clipping off (as transformers' max_grad_norm=0)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
    return loss, sum(int(b["attention_mask"].sum()) for b in batches)


def fit(cfg: TrainConfig, task: Task, opt, sched, ckpt_path: str, meta: dict, ddp, start=(0, 0, 0)):
    """The training loop. Beside it: Ctrl-C/SIGTERM (runs.StopOnSignal), checkpoints (save_checkpoint), progress
    (runs.Progress), torchrun (ddp). start: (step, epoch, batch) of a --resume. -> (step, stopped, curve)."""
    step, start_epoch, start_batch = start
    params = [p for m in task.modules.values() for p in m.parameters()]
    progress = runs.Progress(cfg.epochs, step, total_steps(cfg, len(task.examples)), ddp.is_main)
    curve, stopped = [], ""  # curve: (step, loss, seconds) per optimizer step

    def checkpoint(epoch, batch):
        if ddp.is_main:
            save_checkpoint(ckpt_path, task, opt, sched, step, epoch, batch, meta)
    with runs.StopOnSignal() as signals:  # Ctrl-C/SIGTERM finish the step in flight, save, and say how to resume
        for epoch in range(start_epoch, cfg.epochs):
            task.base.train(task.train_base), [m.train() for m in task.modules.values()]
            steps = epoch_steps(cfg, task, epoch)
            first = -(-start_batch // cfg.grad_accum) if epoch == start_epoch else 0  # batch counts micro-batches
            for s in range(first, len(steps)):
                loss, tokens = optimizer_step(cfg, task, steps[s], opt, sched, ddp, params, step, ckpt_path)
                step += 1
                curve.append((step, loss, progress.update(epoch, step, loss, sched.get_last_lr()[0], tokens)))
                interrupted = ddp.sum(bool(signals.reason)) > 0  # every process stops at the same step
                stopped = "--max-steps" if cfg.max_steps and step >= cfg.max_steps else \
                    (signals.reason or "SIGTERM") * interrupted  # another process's: torchrun passes SIGTERM on
                if stopped or (cfg.save_every > 0 and step % cfg.save_every == 0):  # a crash loses little
                    checkpoint(epoch, (s + 1) * cfg.grad_accum)
                if stopped:
                    return step, stopped, curve
            runs.collapse_note(curve, ddp.is_main)  # a loss that has not moved: one line with the likely fix
            if task.end_of_epoch:
                task.end_of_epoch(epoch, step)
            checkpoint(epoch + 1, 0)
    return step, stopped, curve


def save_checkpoint(path, task: Task, opt, sched, step, epoch, batch, meta: dict):
    """checkpoint.pt: what --resume needs to continue exactly (the trained modules, optimizer, schedule, position,
    RNG, the task's kept state), and meta: the method config, the run's settings and its data fingerprint."""
    atomic_torch_save({**{name: m.state_dict() for name, m in task.modules.items()}, "opt": opt.state_dict(),
                       "sched": sched.state_dict(), "step": step, "epoch": epoch, "batch": batch,
                       "rng": torch.get_rng_state(), "task_state": task.state, **meta}, path)


def train(cfg: TrainConfig) -> dict:
    """Language modelling: train a method on --data, save it, evaluate it on the held-out records."""
    ddp = distributed.setup(cfg)  # under torchrun: this process's share of the work (support/distributed.py)
    torch.manual_seed(cfg.seed)
    cfg = defaults.resolve(cfg, "lm")  # --lr 0, --schedule auto: the method's own (support/defaults.py)
    model, tok = load_model_and_tokenizer(cfg)
    mcfg, eos = method_config(cfg, model), end_token(model, tok, cfg.template)
    ckpt_path, mcfg, info = runs.check_out_folder(cfg, mcfg)  # refuses to overwrite or mix up a saved run
    examples = tokenize_examples(read_records(cfg.data), tok, cfg.template, cfg.max_length, eos)
    train_ex, eval_ex = (examples, tokenize_examples(read_records(cfg.eval_data), tok, cfg.template, cfg.max_length,
                                                     eos)) if cfg.eval_data else \
        split_heldout(examples, cfg.eval_fraction, cfg.seed)  # held out: --eval-data, else a share of --data
    method, scheme = reft.build_method(mcfg, model), mcfg.position_scheme()
    if ddp.is_main:
        print(runs.count_parameters(method, model), file=sys.stderr)
    task = Task(train_ex, lambda ex: to_device(collate(ex, tok.pad_id, scheme), cfg.device),
                lambda b: lm_loss(model, method, b, reduction="sum"), num_loss_tokens, {"method": method}, model)
    # AdamW over the method's parameters only, none decayed (the paper trains ReFT without weight decay; R = qr(A)
    # would stay orthonormal anyway, but decay pulls W, b and the other methods' weights toward 0);
    # foreach: one multi-tensor update rather than a Python loop over the tensors (PyTorch's default on CUDA)
    opt = torch.optim.AdamW([{"params": list(method.parameters()), "weight_decay": 0.0}], lr=cfg.lr, foreach=True)
    sched = schedule(cfg, opt, len(train_ex))
    start = runs.load_checkpoint(ckpt_path, task, opt, sched, mcfg.method) if cfg.resume else (0, 0, 0)
    step, stopped, curve = fit(cfg, task, opt, sched, ckpt_path, {"config": asdict(mcfg), **info}, ddp, start)
    summary = ddp.summary()  # under torchrun: how many examples each process trained on
    ddp.close()
    if not ddp.is_main:  # process 0 alone saves and evaluates
        return {"stopped": stopped} if stopped in runs.EXIT_CODES else {}
    if summary:
        print(summary, file=sys.stderr)
    save(cfg.out, method, mcfg, model, extra={"train_config": info["train_config"], "steps_done": step,
                                              "steps_total": total_steps(cfg, len(train_ex))})
    if stopped:
        print(f"stopped after {step} steps ({stopped}); continue with the same command and --resume", file=sys.stderr)
        return {"step": step, "stopped": stopped}
    result = evaluate(model, tok, method, mcfg, eval_ex, cfg) if eval_ex else {}
    show_examples(model, tok, method, mcfg, eval_ex[:3], result.pop("preds", []), cfg)
    print(f"saved {cfg.out}/reft.pt", file=sys.stderr)
    print(runs.metrics_line(result))  # the last stdout line: metrics for scripts (strict JSON)
    return result | {"curve": curve}


@torch.no_grad()
def generate_ids(model, tok, method, mcfg, examples, max_new_tokens, device, template: str = "auto",
                 batch_size=32) -> list[list[int]]:
    """Greedy continuations (token ids, up to the end token) of the examples' prompts, in left-padded batches."""
    outs, end = [], end_token(model, tok, template)
    for i in range(0, len(examples), batch_size):
        b = to_device(collate(examples[i:i + batch_size], tok.pad_id, mcfg.position_scheme(), padding_side="left",
                              with_labels=False), device)
        out = M.generate(model, b["input_ids"], b["attention_mask"], max_new_tokens, eos_id=end, method=method,
                         positions=b.get("positions"))
        outs += [[t for t in row.tolist() if t != end] for row in out]
    return outs


def evaluate(model, tok, method, mcfg, examples, cfg) -> dict:
    """Held-out loss (the mean over all response tokens, as in training) and exact match of greedy generations
    against the reference responses (stripped)."""
    method.eval()
    loss, n = 0.0, 0
    with torch.no_grad(), autocast(cfg.device):
        for i in range(0, len(examples), cfg.batch_size):
            b = to_device(collate(examples[i:i + cfg.batch_size], tok.pad_id, mcfg.position_scheme()), cfg.device)
            loss, n = loss + lm_loss(model, method, b, reduction="sum").item(), n + num_loss_tokens(b)
        ids = generate_ids(model, tok, method, mcfg, examples, cfg.max_new_tokens, cfg.device, cfg.template)
    preds = [tok.decode(p) for p in ids]
    refs = [response_of(e["record"]) for e in examples]
    em = sum(p.strip() == r.strip() for p, r in zip(preds, refs)) / max(len(refs), 1)
    method.train()
    return {"eval_loss": loss / max(n, 1), "exact_match": em, "n": len(examples), "preds": preds}


def show_examples(model, tok, method, mcfg, examples, preds, cfg):
    """A few held-out prompts with the frozen model's continuation and the trained method's."""
    base = generate_ids(model, tok, None, mcfg, examples, cfg.max_new_tokens, cfg.device, cfg.template)
    for e, b, p in zip(examples, base, preds):
        prompt = e["input_ids"][:e["prompt_len"]]  # as the model saw it: a chat template's tokens included
        shown = tok.decode(prompt, skip_special=False) if uses_chat(cfg.template, tok) else tok.decode(prompt)
        print(f"prompt: {shown!r}\n  base:   {tok.decode(b)!r}\n"
              f"  {mcfg.method}: {p!r}")


if __name__ == "__main__":  # the command line sits on top of this file (support/cli.py); it may reach up
    from support.cli import main
    main()
