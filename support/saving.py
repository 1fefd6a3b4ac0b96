"""Saving and loading a trained method: folder/reft.pt (weights + MethodConfig + a fingerprint of the base model),
folder/reft_config.json (a readable copy) and train.py's checkpoint.pt. Every file is written atomically.

Files saved before the teaching refactor used other parameter names (LoReFT `rotation` for A and `learned_source`
for W; DiReFT `learned_source` for W₁ and `proj` for W₂) and the "legacy" short-prompt position rule: `load` and
`upgrade_state_dict` map them, so those runs reload with the same weights and the positions they were trained on.
Files from before LoReFT's `rotation` option hold the QR parametrization (A) and load as rotation "qr".

A LoReFT with rotation "householder" (torch's orthogonal parametrization, as pyreft) is saved as its materialised
U = Rᵀ [d, r] (key `<intervention>.U`), not as the d×d base and the reflectors; `load` rebuilds the parametrization so
that it yields exactly that U (`set_householder_rotation`). checkpoint.pt keeps the full state (base, reflectors,
optimizer), so --resume continues the same trajectory.
"""
import json
import os
import re
import sys
from dataclasses import asdict, replace
from copy import deepcopy

import torch

from support.files import atomic_text, atomic_write
from support.untrusted import load_torch
from reft import POSITION_RULES, LoReFT, Method, MethodConfig, PrefixTuning, build_method, reft_positions

# old parameter name -> new, per method kind (the order of parameters, which optimizer states follow, is unchanged)
RENAMED = {"loreft": [(r"\.rotation$", ".A"), (r"\.learned_source\.", ".W.")],
           "direft": [(r"\.proj$", ".W2"), (r"\.learned_source\.", ".W1.")]}


def upgrade_state_dict(state: dict, method: str) -> dict:
    """A method's state dict with pre-refactor parameter names renamed (a no-op for current files)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in RENAMED.get(method, []):
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def legacy_positions(prompt_len: int, first: int, last: int, share_weights: bool, offset: int = 0) -> torch.Tensor:
    """The short-prompt rule of runs saved before the paper's was adopted: with only fA (or only lB) it kept
    min(A, n) tokens instead of min(A, ⌊n/2⌋); with fA+lB it was already the paper's (reft.reft_positions)."""
    if first and last:
        return reft_positions(prompt_len, first, last, share_weights, offset)
    k = min(first + last, prompt_len)
    kept = range(k) if first else range(prompt_len - k, prompt_len)
    return torch.tensor([[offset + i for i in kept] + [-1] * (first + last - k)])


POSITION_RULES["legacy"] = legacy_positions  # so that MethodConfig(position_rule="legacy").position_scheme() works


def upgrade_config(config: dict) -> MethodConfig:
    """A saved MethodConfig dict -> MethodConfig. Files from before `position_rule` existed used the legacy rule, and
    those from before `rotation` existed the QR parametrization of LoReFT's R."""
    return MethodConfig(**{"position_rule": "legacy", "rotation": "qr", **config})


def householder_modules(method) -> dict:
    """{state-dict prefix: module} of the LoReFT interventions that keep R by torch's orthogonal parametrization."""
    return {name + ".": m for name, m in method.named_modules() if isinstance(m, LoReFT) and m.rotation == "householder"}


@torch.no_grad()
def set_householder_rotation(m: LoReFT, U: torch.Tensor):
    """Make a Householder LoReFT's parametrization yield exactly U [d, r] (orthonormal columns): assigning m.U runs
    torch's right_inverse (base = U completed to a d×d orthogonal matrix by QR of [U | randn], reflectors = −I, so that
    U = base[:, :r]); base's first r columns, equal to U up to rounding, are then set to U itself, so R is reproduced
    bit for bit and base stays orthogonal to float precision. (pyreft's reload writes U into a fresh random base,
    which then is no longer orthogonal.)"""
    U = U.to(m.W.weight.dtype)
    err = float((U.T @ U - torch.eye(U.shape[1], dtype=U.dtype)).abs().max())
    if err > 1e-4:
        raise ValueError(f"a Householder LoReFT's U must have orthonormal columns (max |UᵀU − I| = {err:.1e})")
    m.U = U
    m.parametrizations.U[0].base[:, :U.shape[1]] = U


def base_fingerprint(model) -> dict:
    """What identifies the base model a method was trained on: its shape and a checksum of the embeddings."""
    mc = model.config
    emb = (model.embed_tokens if hasattr(model, "embed_tokens") else model.word_embeddings).weight
    return {"model_type": mc.model_type, "hidden_size": mc.hidden_size, "num_hidden_layers": mc.num_hidden_layers,
            "vocab_size": mc.vocab_size, "embedding_checksum": float(emb.detach().double().abs().sum())}


def atomic_torch_save(obj, path: str):
    """torch.save through support/files.atomic_write: a crash never leaves a half-written file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save(folder: str, method: Method, cfg: MethodConfig, model, extra: dict | None = None):
    """folder/reft.pt: {config, base fingerprint, the method's weights (+ extra, e.g. a classifier head)}; also a
    readable folder/reft_config.json."""
    if isinstance(method, PrefixTuning) and method.mlp is not None:  # keep only P_θ (Li & Liang §4.3), as PEFT
        method, cfg = deepcopy(method).fold(), replace(cfg, prefix_projection=False)
    state = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    for prefix, m in householder_modules(method).items():  # the materialised U instead of the d×d base + reflectors
        del state[prefix + "parametrizations.U.original"], state[prefix + "parametrizations.U.0.base"]
        state[prefix + "U"] = m.U.detach().cpu()
    blob = {"config": asdict(cfg), "base": base_fingerprint(model), "state_dict": state, **(extra or {})}
    atomic_torch_save(blob, os.path.join(folder, "reft.pt"))
    atomic_text(os.path.join(folder, "reft_config.json"), json.dumps({"config": asdict(cfg), "base": blob["base"]},
                                                                     indent=2))


def load(folder: str, model) -> tuple[Method, MethodConfig, dict]:
    """Rebuild a saved method on `model` (ours: reft.pt); returns (method, config, the whole saved blob)."""
    path = os.path.join(folder, "reft.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no reft.pt (a folder written by train.py --out); for a pyreft folder "
                                "(config.json + intkey_*.bin) pass --positions as well")
    blob = load_torch(path)
    if not isinstance(blob, dict) or not all(k in blob for k in ("config", "base", "state_dict")):
        raise ValueError(f"{path}: not a run saved by this project (expected config, base and state_dict)")
    base, mine = blob["base"], base_fingerprint(model)
    for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if base[k] != mine[k]:
            raise ValueError(f"{folder} was trained on a different base model: {k} {base[k]} there, {mine[k]} here")
    if abs(base["embedding_checksum"] - mine["embedding_checksum"]) > 1e-3 * abs(base["embedding_checksum"]):
        raise ValueError(f"{folder} was trained on a different base model (embedding weights differ)")
    cfg = upgrade_config(blob["config"])
    method = Method() if cfg.method == "none" else build_method(cfg, model)  # none: a classifier head alone
    state = upgrade_state_dict(blob["state_dict"], cfg.method)
    for prefix, m in householder_modules(method).items():
        if prefix + "U" not in state:
            raise ValueError(f"{folder}: no {prefix}U for the Householder LoReFT intervention (a damaged reft.pt?)")
        set_householder_rotation(m, state.pop(prefix + "U"))
        state.update({prefix + k: v for k, v in m.state_dict().items() if k.startswith("parametrizations.")})
    method.load_state_dict(state)
    progress_note(folder, blob)
    return method, cfg, blob


def progress_note(folder: str, blob: dict):
    """--load of a run that stopped before its last step says so."""
    done, total = blob.get("steps_done"), blob.get("steps_total")
    if isinstance(done, int) and isinstance(total, int) and done < total:
        print(f"note: {folder} trained {done} of {total} steps (it was stopped; continue it with --resume)",
              file=sys.stderr)
