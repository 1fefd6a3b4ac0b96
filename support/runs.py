"""Nothing a user saved is lost: one run per --out at a time, atomic files, resuming exactly the saved run, signals,
strict metrics lines. train.py and support/classify.py call these at their edges.

  exclusive(folder)            a lock for the whole run (the second run into the same --out says who holds it);
                               temporary files a killed run left there are removed once the lock is held
  atomic_write(path, write)    a temporary name unique to the process, fsync, rename: a file is old or new, never half
  with_saved_settings(cfg, given)   --resume: flags not given take the saved run's values
  check_resume(cfg, blob)      --resume: any other setting, or a changed data file, is refused with the differences
  StopOnSignal                 Ctrl-C (SIGINT) and SIGTERM finish the step in flight and save; exit 130 / 143
  metrics_line(result)         the last stdout line, strict JSON (NaN and infinities become null)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import fields, replace

LOCK, TMP_PREFIX = ".reft.lock", ".reft-tmp-"
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


def remove_stale_temporaries(folder: str):
    """Temporary files of this project (TMP_PREFIX) left in folder and its sub-folders by a killed run."""
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TMP_PREFIX):
                try:
                    os.remove(os.path.join(root, name))
                except OSError:
                    pass


def atomic_write(path: str, write, mode: str = "wb"):
    """write(f) into a temporary file of this process beside path, fsync it, then rename it over path (and fsync
    the folder): a crash, SIGKILL or full disk leaves the old file or the new one, never a mix."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}{os.path.basename(path)}.{os.getpid()}.")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # the rename itself survives a power cut once the folder is synced
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_text(path: str, text: str):
    atomic_write(path, lambda f: f.write(text), mode="w")


def refuse_overwrite(path: str, overwrite: bool):
    """A file the user has (predictions, ...) is replaced only with --overwrite."""
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists: pass --overwrite to replace it")


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
    from dataclasses import asdict
    return {"train_config": asdict(cfg), "data_fingerprint": fingerprint(cfg)}


def _saved_train_config(folder: str) -> dict | None:
    from support.untrusted import load_torch
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


def progress_note(folder: str, blob: dict):
    """--load of a run that stopped before its last step says so."""
    done, total = blob.get("steps_done"), blob.get("steps_total")
    if isinstance(done, int) and isinstance(total, int) and done < total:
        print(f"note: {folder} trained {done} of {total} steps (it was stopped; continue it with --resume)",
              file=sys.stderr)


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
