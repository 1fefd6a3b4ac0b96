"""Reading files the user did not write: checkpoints, run folders, config/tokenizer JSON, names read from a repo.

Every reader here answers bad input with one ValueError "FILE: what is wrong" (the command lines print it as
`error: ...` and exit non-zero), never runs code from the file, and bounds the work a file can ask for:

  load_torch(path)        torch.load with weights_only=True: tensors, numbers, strings, lists and dicts only; a pickle
                          that would import or call anything is refused (never a hint to turn the check off)
  read_json(path)         JSON of any nesting depth or encoding error -> one line (a UTF-8 BOM is accepted)
  parse_json(text, src)   the same for JSON held in memory (a safetensors header)
  plain_name(name, src)   a file name read from a repo (index shards, ...): a plain relative path inside the folder
  time_limit(s, what)     stops a computation that runs longer than s seconds (chat templates, tokenizer regexes)

The threat model these serve is written out in docs/reference.md ("What is trusted").
"""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import threading
import time
from contextlib import contextmanager

import torch

MAX_JSON_BYTES = 512 << 20  # tokenizer.json of a 150k-token vocabulary is ~10 MB; a config is a few KB


def load_torch(path: str, map_location="cpu", mmap: bool = False):
    """A .pt/.bin file loaded weights-only. Every file this project saves (reft.pt, checkpoint.pt, of every version)
    and every checkpoint it reads (pytorch_model.bin, llama2.c .pt, pyreft's intkey_*.bin) holds plain data."""
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as e:  # files in torch's pre-1.6 format cannot be memory-mapped: read them whole
            if not (mmap and "mmap can only be used" in str(e)):
                raise
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message goes on to suggest weights_only=False: never do that
        m = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global|\.\s|$)", str(e))
        if not m:  # not torch's refusal: bytes that are no pickle at all
            raise ValueError(f"{path}: not a PyTorch file torch.load can read (damaged or another format)") from None
        raise ValueError(f"{path}: not a weights-only PyTorch file, refused ({m.group(1).strip()}); this project never loads a "
                         "file that can run code") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path}: not a PyTorch file torch.load can read (damaged or another format: "
                         f"{type(e).__name__})") from None


def parse_json(text: str | bytes, source: str):
    """JSON text -> Python value; any defect (syntax, nesting too deep, bad UTF-8) is one ValueError naming source."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        return json.loads(text.removeprefix("\ufeff"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply to read") from None


def read_json(path: str):
    """A JSON file -> Python value, or one ValueError naming the file."""
    size = os.path.getsize(path)
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {size:,} bytes is too large for a JSON settings file")
    with open(path, "rb") as f:
        return parse_json(f.read(), path)


def json_object(path: str) -> dict:
    """read_json, and the top level must be an object {...} (config.json, tokenizer.json, ...)."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, found {type(value).__name__}")
    return value


def plain_name(name, source: str) -> str:
    """name, if it is a plain relative path that stays inside its folder ("model-00001-of-00002.safetensors",
    "sub/x.bin"); anything else (absolute, "..", backslashes, empty, control characters) is refused."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts) or \
            re.search(r"[\x00-\x1f\x7f:]", name):
        raise ValueError(f"{source}: {name!r} is not a plain file name inside the folder (refused)")
    return name


class TimeLimit(BaseException):  # not Exception: code under the limit cannot catch it by accident
    """Raised inside a computation that ran past its time_limit."""


@contextmanager
def time_limit(seconds: float, what: str):
    """Within the block, a computation longer than `seconds` raises ValueError(f"{what}: took longer than ...").

    A SIGALRM timer interrupts pure-Python loops and Python's `re` (which checks for signals while it backtracks).
    Signals reach only the main thread: elsewhere (or on Windows) the block runs without the limit. Nested limits
    keep the outer one's deadline."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread() and \
        signal.getitimer(signal.ITIMER_REAL)[0] == 0  # an outer limit is already running: it stays in charge
    if not usable:
        yield
        return

    def expired(signum, frame):
        raise TimeLimit

    previous = signal.signal(signal.SIGALRM, expired)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except TimeLimit:
        raise ValueError(f"{what}: still running after {time.monotonic() - start:.1f} s (limit {seconds:g} s): "
                         "refused, a file may not ask for unbounded work") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
