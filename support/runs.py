"""A training run's folder and life: nothing a user saved is lost. The loop in train.py calls these at its edges.

  exclusive(folder)            a lock for the whole run (the second run into the same --out says who holds it);
                               temporary files a killed run left there are removed once the lock is held
  check_out_folder(cfg, mcfg)  --out holding a run needs --resume or --overwrite
  with_saved_settings(cfg, given)   --resume: flags not given take the saved run's values
  check_resume(cfg, blob)      --resume: any other setting, or a changed data file, is refused with the differences
  load_checkpoint(...)         --resume: weights, optimizer, schedule and RNG as they were
  StopOnSignal                 Ctrl-C (SIGINT) and SIGTERM finish the step in flight and save; exit 130 / 143
  check_finite(loss, ...)      a NaN/inf loss stops the run before the update
  metrics_line(result)         the last stdout line, strict JSON (NaN and infinities become null)
  count_parameters, set_threads     what a run prints, and CPU threads for tiny models
Files are written by support/files.atomic_write (temporary name, fsync, rename).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, fields, replace

import torch

from support.files import remove_stale_temporaries
from support.saving import upgrade_config, upgrade_state_dict
from support.untrusted import load_torch

LOCK = ".reft.lock"
# settings a --resume may change: how far it goes, how often it saves, where it runs (everything else is the run)
RESUMABLE_CHANGES = ("resume", "overwrite", "max_steps", "save_every", "device", "dist_timeout", "out")
EXIT_CODES = {"Ctrl-C": 130, "SIGTERM": 143}  # the shell's codes for a process stopped by SIGINT / SIGTERM


# -----------------------------------------------------------------------------------------------------------------
# One run per folder, atomic files


@contextmanager
def exclusive(folder: str):
    """Hold folder's lock for the block: a second run into the same folder stops at once with one line naming the
    process that holds it. Under torchrun only process 0 (the one that writes) takes it."""
    if int(os.environ.get("RANK", "0")) != 0 or not folder:
        yield
        return
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock
        yield
        return
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ValueError(f"{folder} is in use by {holder}: wait for that run to end, or pass another --out") \
                from None
        f.seek(0), f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        f.flush()
        remove_stale_temporaries(folder)
        try:
            yield
        finally:
            f.seek(0), f.truncate()
            if made and os.listdir(folder) == [LOCK]:  # the run stopped before writing anything: no empty folder
                os.remove(os.path.join(folder, LOCK)), os.rmdir(folder)
            fcntl.flock(f, fcntl.LOCK_UN)


# -----------------------------------------------------------------------------------------------------------------
# --resume: the saved run, exactly


def fingerprint(cfg) -> dict:
    """{path: sha256} of the data files a run reads: a changed file makes a --resume a different run."""
    out = {}
    for path in (cfg.data, cfg.eval_data):
        if path and os.path.isfile(path):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[path] = h.hexdigest()
    return out


def run_info(cfg) -> dict:
    """What a checkpoint records of its run: every setting (TrainConfig) and the data fingerprint."""
    return {"train_config": asdict(cfg), "data_fingerprint": fingerprint(cfg)}


def _saved_train_config(folder: str) -> dict | None:
    path = os.path.join(folder, "checkpoint.pt")
    if not os.path.exists(path):
        return None
    blob = load_torch(path)
    saved = blob.get("train_config") if isinstance(blob, dict) else None
    return saved if isinstance(saved, dict) else None  # checkpoints before this record: the method config only


def with_saved_settings(cfg, given: set):
    """--resume: every setting not given on the command line takes the saved run's value (those a resume may change
    keep the command line's). Explicit flags stay, and `check_resume` refuses them if they differ."""
    if not cfg.resume or (saved := _saved_train_config(cfg.out)) is None:
        return cfg
    known = {f.name for f in fields(cfg)}
    keep = set(given) | set(RESUMABLE_CHANGES)
    return replace(cfg, **{k: v for k, v in saved.items() if k in known and k not in keep})


def check_resume(cfg, blob: dict) -> dict:
    """The run info a resumed run keeps (the saved one, never rewritten), after refusing one line that lists every
    setting that differs from the saved run and every data file that changed since."""
    saved = blob.get("train_config")
    if not isinstance(saved, dict):
        return run_info(cfg)
    now = run_info(cfg)
    diff = [f"--{k.replace('_', '-')} {v!r} there, {now['train_config'].get(k)!r} here" for k, v in saved.items()
            if k not in RESUMABLE_CHANGES and k in now["train_config"] and now["train_config"][k] != v]
    old_data = blob.get("data_fingerprint") or {}
    diff += [f"{path} changed since the run started" for path, sha in old_data.items()
             if now["data_fingerprint"].get(path, sha) != sha]
    if diff:
        raise ValueError(f"--resume: {cfg.out} is another run ({'; '.join(diff)}); resume with its settings, or "
                         "pass --overwrite to start again")
    return {"train_config": saved, "data_fingerprint": old_data}


# -----------------------------------------------------------------------------------------------------------------
# The run folder: --out, --resume


def check_out_folder(cfg, mcfg):
    """(the checkpoint path in --out, the method config to train, the run's info to save), after refusing what would
    lose or mix up a saved run: --resume without a checkpoint, with other settings or changed data
    (support/runs.check_resume), and --out holding a run without --resume or --overwrite. A resumed run keeps the
    position rule it was trained with, and its saved settings. With --overwrite the old files are not read at all
    (they are replaced, whatever they hold)."""
    ckpt = os.path.join(cfg.out, "checkpoint.pt")
    if cfg.resume:
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"--resume: no checkpoint.pt in {cfg.out}")
        blob = load_torch(ckpt)  # read once: the settings, the data fingerprint and the method config
        info = check_resume(cfg, blob)  # (checkpoints of the first version hold no config: reft.pt has it)
        saved = method_config_of(blob, ckpt) or saved_method_config(cfg.out)
        if saved is not None and saved != asdict(mcfg):
            diff = ", ".join(f"{k} {saved[k]!r} there, {v!r} here" for k, v in asdict(mcfg).items()
                             if saved.get(k) != v and k != "position_rule")
            if diff:
                raise ValueError(f"--resume: {cfg.out} holds a run with other settings ({diff}); pass the same "
                                 "flags, or another --out")
        return ckpt, replace(mcfg, position_rule=saved["position_rule"]) if saved else mcfg, info
    held = [n for n in ("checkpoint.pt", "reft.pt") if os.path.exists(os.path.join(cfg.out, n))]
    if held and not cfg.overwrite:
        try:
            saved = saved_method_config(cfg.out)
            what = f"a {saved['method']} run (rank {saved['rank']})" if saved else "a run"
        except ValueError:  # unreadable, or not plain data: it is not read further, and still not overwritten
            what = f"a run ({held[0]} cannot be read)"
        raise ValueError(f"{cfg.out} already holds {what}: pass --resume to continue it, --overwrite to replace it, "
                         "or another --out")
    return ckpt, mcfg, run_info(cfg)


def method_config_of(blob, path: str) -> dict | None:
    """The MethodConfig (as a dict) a loaded reft.pt or checkpoint.pt holds, upgraded from older versions; None if
    it holds none."""
    if not (isinstance(blob, dict) and isinstance(blob.get("config"), dict)):
        return None
    try:
        return asdict(upgrade_config(blob["config"]))
    except TypeError as e:  # a key this version does not know
        raise ValueError(f"{path}: not a run saved by this project ({e})") from None


def saved_method_config(folder: str) -> dict | None:
    """The MethodConfig (as a dict) of the run saved in folder: from checkpoint.pt, else reft.pt; None if neither.
    Both are read weights-only (support/untrusted.load_torch): a file that is not plain data is a one-line error."""
    for name in ("checkpoint.pt", "reft.pt"):
        path = os.path.join(folder, name)
        if os.path.exists(path) and (saved := method_config_of(load_torch(path), path)) is not None:
            return saved
    return None


def load_checkpoint(path, task, opt, sched, kind: str) -> tuple[int, int, int]:
    """Restore a --resume checkpoint into the task's modules (the method, a classification head), the optimizer, the
    schedule, the RNG and the task's kept state; -> (step, epoch, batch)."""
    ck = load_torch(path)
    for name, module in task.modules.items():
        module.load_state_dict(upgrade_state_dict(ck[name], kind) if name == "method" else ck[name])
    opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
    torch.set_rng_state(ck["rng"])
    task.state.update(ck.get("task_state") or {})
    print(f"resumed from {path} at step {ck['step']}", file=sys.stderr)
    return ck["step"], ck["epoch"], ck["batch"]


# -----------------------------------------------------------------------------------------------------------------
# Signals and results


class StopOnSignal:
    """Within `with StopOnSignal() as s:`, Ctrl-C (SIGINT) or SIGTERM (how clusters preempt a job) sets s.reason
    instead of stopping the process, so the loop can finish the optimizer step in flight and save a checkpoint.
    A second signal stops at once."""
    SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __enter__(self):
        self.reason, self.previous = "", {}
        for sig in self.SIGNALS:
            handler = signal.getsignal(sig)
            if handler in (signal.default_int_handler, signal.SIG_DFL):  # main thread, nobody else's handler
                self.previous[sig] = handler
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.reason:
            raise KeyboardInterrupt
        self.reason = self.SIGNALS[signum]
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
        print(f"\n{self.reason}: finishing this step and saving a checkpoint ({again} to stop at once)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, handler)
        return False


class Progress:
    """A line every 10 optimizer steps and at the last: epoch, step, loss, learning rate, tokens/s and the time left
    (process 0 alone prints). update() returns the seconds since the start."""

    def __init__(self, epochs: int, first_step: int, total: int, prints: bool = True):
        self.epochs, self.first, self.total, self.prints = epochs, first_step, total, prints
        self.t0, self.tokens = time.time(), 0

    def update(self, epoch: int, step: int, loss: float, lr: float, tokens: int) -> float:
        self.tokens, elapsed = self.tokens + tokens, time.time() - self.t0
        if self.prints and (step % 10 == 0 or step == self.total):
            eta = elapsed / max(step - self.first, 1) * (self.total - step)
            print(f"epoch {epoch + 1}/{self.epochs} step {step}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | "
                  f"{self.tokens / max(elapsed, 1e-9):,.0f} tok/s | eta {eta:.0f}s", file=sys.stderr)
        return elapsed


def collapse_note(curve: list, prints: bool = True, window: int = 10) -> bool:
    """After an epoch: when the mean loss of the last `window` steps is within 2 % of the first step's, the run has
    learned nothing (a classifier stuck at ln C for C classes, after a learning rate too high): say so in one line
    with the likely fix. Returns whether it did."""
    if len(curve) < 2 * window:
        return False
    first, last = curve[0][1], sum(loss for _, loss, _ in curve[-window:]) / window
    stuck = abs(last - first) <= 0.02 * abs(first)
    if stuck and prints:
        print(f"warning: the training loss has not moved ({first:.4f} at step 1, {last:.4f} now): the run may have "
              "collapsed; try a lower --lr (e.g. a third of it) or --lr-grid", file=sys.stderr)
    return stuck


def check_finite(loss: float, step: int, checkpoint: str):
    """A NaN or infinite loss stops the run before the optimizer step: the last checkpoint stays the last good one."""
    if not math.isfinite(loss):
        kept = f"{checkpoint} keeps the last good state" if os.path.exists(checkpoint) else "nothing was saved"
        raise ValueError(f"step {step + 1}: the loss is {loss} (not finite): stopped before updating the weights; "
                         f"{kept} (try a lower --lr)")


def metrics_line(result: dict) -> str:
    """Strict JSON (no NaN): {"eval_loss": 1.2345, ...}, rounded to 4 places, non-finite numbers as null."""
    clean = {k: (round(v, 4) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in result.items()}
    return json.dumps(clean, allow_nan=False)


def count_parameters(method: torch.nn.Module, model: torch.nn.Module) -> str:
    """'trainable params: 1,234 || base params: 260,032 || trainable%: 0.4745' (the % is over the base, as the
    ReFT paper reports it)."""
    n = sum(p.numel() for p in method.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable params: {n:,} || base params: {total:,} || trainable%: {100 * n / total:.4f}"


def set_threads(model=None):
    """CPU threads for the command lines: REFT_THREADS if set; else OMP_NUM_THREADS's choice if set; else one thread
    for a tiny model (under 5M parameters), where per-operation overhead dominates; else one thread per core that
    other work leaves idle (cores minus the 1-minute load average, at least 1). Measured on 2 cores, the MiniLM
    classification example (22.7M parameters), 1 vs 2 threads: idle 12.4 vs 8.7 s; one other busy process 12.0 vs
    22.9 s; two 18.4 vs 53.5 s. Threads that compete with other jobs for a core cost far more than they give."""
    if os.environ.get("REFT_THREADS"):
        torch.set_num_threads(int(os.environ["REFT_THREADS"]))
    elif os.environ.get("OMP_NUM_THREADS") or model is None:
        return
    elif sum(p.numel() for p in model.parameters()) < 5_000_000:
        torch.set_num_threads(1)
    else:
        try:
            idle = (os.cpu_count() or 1) - os.getloadavg()[0]
        except (OSError, AttributeError):  # no load average (Windows): PyTorch's default
            return
        torch.set_num_threads(max(1, min(torch.get_num_threads(), round(idle))))
