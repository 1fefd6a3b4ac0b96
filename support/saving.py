"""Saving and loading a trained method: folder/reft.pt (weights + MethodConfig + a fingerprint of the base model),
folder/reft_config.json (a readable copy) and train.py's checkpoint.pt. Every file is written atomically.

Files saved before the teaching refactor used other parameter names (LoReFT `rotation` for A and `learned_source`
for W; DiReFT `learned_source` for W₁ and `proj` for W₂) and the "legacy" short-prompt position rule: `load` and
`upgrade_state_dict` map them, so those runs reload with the same weights and the positions they were trained on.
"""
import json
import os
import re
import tempfile
from dataclasses import asdict, replace
from copy import deepcopy

import torch

from reft import Method, MethodConfig, PrefixTuning, build_method

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


def upgrade_config(config: dict) -> MethodConfig:
    """A saved MethodConfig dict -> MethodConfig. Files from before `position_rule` existed used the legacy rule."""
    return MethodConfig(**{"position_rule": "legacy", **config})


def base_fingerprint(model) -> dict:
    """What identifies the base model a method was trained on: its shape and a checksum of the embeddings."""
    mc = model.config
    emb = (model.embed_tokens if hasattr(model, "embed_tokens") else model.word_embeddings).weight
    return {"model_type": mc.model_type, "hidden_size": mc.hidden_size, "num_hidden_layers": mc.num_hidden_layers,
            "vocab_size": mc.vocab_size, "embedding_checksum": float(emb.detach().double().abs().sum())}


def atomic_torch_save(obj, path: str):
    """Write to a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(folder: str, method: Method, cfg: MethodConfig, model, extra: dict | None = None):
    """folder/reft.pt: {config, base fingerprint, the method's weights (+ extra, e.g. a classifier head)}; also a
    readable folder/reft_config.json."""
    if isinstance(method, PrefixTuning) and method.mlp is not None:  # keep only P_θ (Li & Liang §4.3), as PEFT
        method, cfg = deepcopy(method).fold(), replace(cfg, prefix_projection=False)
    state = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    blob = {"config": asdict(cfg), "base": base_fingerprint(model), "state_dict": state, **(extra or {})}
    atomic_torch_save(blob, os.path.join(folder, "reft.pt"))
    with open(os.path.join(folder, "reft_config.json.tmp"), "w") as f:
        json.dump({"config": asdict(cfg), "base": blob["base"]}, f, indent=2)
    os.replace(os.path.join(folder, "reft_config.json.tmp"), os.path.join(folder, "reft_config.json"))


def load(folder: str, model) -> tuple[Method, MethodConfig, dict]:
    """Rebuild a saved method on `model` (ours: reft.pt); returns (method, config, the whole saved blob)."""
    path = os.path.join(folder, "reft.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no reft.pt (a folder written by train.py --out); for a pyreft folder "
                                "(config.json + intkey_*.bin) pass --positions as well")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    base, mine = blob["base"], base_fingerprint(model)
    for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if base[k] != mine[k]:
            raise ValueError(f"{folder} was trained on a different base model: {k} {base[k]} there, {mine[k]} here")
    if abs(base["embedding_checksum"] - mine["embedding_checksum"]) > 1e-3 * abs(base["embedding_checksum"]):
        raise ValueError(f"{folder} was trained on a different base model (embedding weights differ)")
    cfg = upgrade_config(blob["config"])
    method = build_method(cfg, model)
    method.load_state_dict(upgrade_state_dict(blob["state_dict"], cfg.method))
    return method, cfg, blob


