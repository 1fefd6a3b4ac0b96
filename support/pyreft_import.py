"""Importing a folder saved by pyreft (ReftModel.save: config.json + intkey_<key>.bin), LLaMA "block_output" only.

pyreft's names -> ours: LoreftIntervention {weight W, bias b, rotate_layer U = Rᵀ} -> LoReFT (W, A = U);
NodireftIntervention (paper DiReFT) {learned_source W₁ + b, proj_layer W₂} -> DiReFT (W1, W2). "learned_source" is
pyvene's name for the learned projection that produces the new subspace coordinates (W h + b).
"""
import os
import re

import torch

from support.untrusted import json_object, load_torch, plain_name
from reft import Method, MethodConfig, build_method, parse_positions

PYREFT_KINDS = {"LoreftIntervention": "loreft", "NodireftIntervention": "direft"}  # pyreft class -> our method
_PYVENE_FIELDS = ("layer", "component", "unit", "max_number_of_units", "low_rank_dimension", "intervention_type",
                  "intervention", "subspace_partition", "group_key", "intervention_link_key", "moe_key",
                  "source_representation", "hidden_source_representation", "latent_dim")  # pyvene RepresentationConfig


def _pyreft_representations(cfg: dict, folder: str) -> list[dict]:
    """The representations of a pyvene IntervenableConfig as dicts (saved as lists in field order, or as dicts)."""
    reps = cfg.get("representations")
    if not isinstance(reps, list) or not reps:
        raise ValueError(f"{folder}/config.json has no 'representations' list: not a pyreft intervention folder")
    out = []
    for r in reps:
        if isinstance(r, dict):
            out.append({f: r.get(f) for f in _PYVENE_FIELDS})
        elif isinstance(r, list):
            out.append(dict(zip(_PYVENE_FIELDS, r + [None] * (len(_PYVENE_FIELDS) - len(r)))))
        else:
            raise ValueError(f"{folder}/config.json: representation {r!r} is neither a list nor a dict")
    return out


def load_pyreft(folder: str, model, positions: str) -> tuple[Method, MethodConfig]:
    """Load interventions saved by pyreft's `ReftModel.save(folder)` onto our `model` (a model.Llama).

    Supported: `LoreftIntervention` (-> LoReFT) and `NodireftIntervention` (paper DiReFT, -> DiReFT), component
    "block_output" (the residual stream after block `layer`, our seam 5), unit "pos". pyreft does not save the
    positions, so `positions` ("f1+l1", "f3", ...) must be given; it decides the layout:
      fA+lB untied: every layer appears twice; the first half of the representations is the first-A group (key
        #0 on its layer), the second half the last-B group (#1), as pyreft's training scripts lay them out;
      fA+lB tied (share_weights), fA, lB: every layer appears once, one group.
    State dicts: LoReFT {weight W [r,d], bias b [r], rotate_layer U [d,r]} -> W = (W, b), A = U (our
    R = qr(A).Qᵀ with signs fixed, which is Uᵀ for an orthonormal U); Nodireft {learned_source.weight,
    learned_source.bias, proj_layer.weight W₂} -> W1 = learned_source, W2 = W₂ (proj_layer.bias is unused by pyreft's
    forward and dropped). pyreft does not save dropout or act_fn: they come back as 0.0 and "linear" (as
    pyreft's own loader does). Returns (method, config); save it in our format with `save`.
    """
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        hint = " (it has reft.pt: load it with reft.load)" if os.path.exists(os.path.join(folder, "reft.pt")) else ""
        raise FileNotFoundError(f"{folder}: neither reft.pt (saved by this project) nor a pyreft config.json "
                                f"(+ intkey_*.bin, saved by ReftModel.save){hint}")
    cfg = json_object(cfg_path)
    reps = _pyreft_representations(cfg, folder)
    mc = model.config
    if getattr(mc, "model_type", None) not in ("llama", "qwen2"):  # a decoder's block_output
        raise ValueError(f"pyreft import supports LLaMA-style decoders only (component 'block_output'), "
                         f"not {getattr(mc, 'model_type', type(model).__name__)!r}")
    types = cfg.get("intervention_types")
    types = [types] * len(reps) if isinstance(types, str) else list(types or [])
    if len(types) != len(reps):
        raise ValueError(f"{cfg_path}: {len(types)} intervention_types for {len(reps)} representations")
    names = {re.sub(r"^<class '(.*)'>$", r"\1", str(t)).rsplit(".", 1)[-1] for t in types}
    bad = sorted(n for n in names if n not in PYREFT_KINDS)
    if bad:
        raise ValueError(f"{folder}: pyreft intervention type {bad[0]} is not supported (supported: "
                         f"{', '.join(PYREFT_KINDS)}; pyreft's DireftIntervention is not paper DiReFT)")
    if len(names) != 1:
        raise ValueError(f"{folder} mixes intervention types {sorted(names)}: one type per method is supported")
    kind = PYREFT_KINDS[names.pop()]
    for r in reps:
        if r["component"] != "block_output" or r["unit"] != "pos":
            raise ValueError(f"{folder}: pyreft component {r['component']!r} (unit {r['unit']!r}) is not supported "
                             "(supported: component 'block_output', unit 'pos', on a LLaMA model)")
        if not isinstance(r["layer"], int) or not 0 <= r["layer"] < mc.num_hidden_layers:
            raise ValueError(f"{folder}: intervention on layer {r['layer']!r}, but the model has "
                             f"{mc.num_hidden_layers} layers (a different base model?)")
    dims = {d for d in (cfg.get("intervention_dimensions") or []) if d is not None}
    if dims and dims != {mc.hidden_size}:
        raise ValueError(f"{folder}: interventions of hidden size {sorted(dims)[0]}, the model has "
                         f"{mc.hidden_size} (a different base model?)")

    # positions -> groups; each representation i goes to (layer, group)
    first, last = parse_positions(positions)
    layers = [r["layer"] for r in reps]
    once = len(set(layers)) == len(layers)
    half = len(reps) // 2
    twice = len(reps) % 2 == 0 and len(set(layers[:half])) == half and set(layers[:half]) == set(layers[half:])
    if first and last and twice and not once:
        share, slots = False, [(l, 0) for l in layers[:half]] + [(l, 1) for l in layers[half:]]
    elif once:
        share, slots = bool(first and last), [(l, 0) for l in layers]
    else:
        want = "one intervention per layer" if not (first and last) else \
            "one (tied) or two (untied, first half of the list = first-A group) interventions per layer"
        raise ValueError(f"positions {positions!r} needs {want}, but {folder} has interventions on layers "
                         f"{layers}; pass the positions it was trained with (e.g. f1+l1 for untied pairs)")

    # state dicts, in our layout
    counter, states = {}, []
    for r in reps:
        proposal = f"layer_{r['layer']}_comp_{r['component']}_unit_{r['unit']}_nunit_{r['max_number_of_units']}"
        counter[proposal] = counter.get(proposal, -1) + 1
        path = os.path.join(folder, plain_name(f"intkey_{proposal}#{counter[proposal]}.bin", f"{folder}/config.json"))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found (pyreft saves one intkey_<key>.bin per intervention; "
                                    f"present: {sorted(n for n in os.listdir(folder) if n.endswith('.bin'))})")
        states.append(load_torch(path))
    need = {"loreft": ("weight", "bias", "rotate_layer"),
            "direft": ("learned_source.weight", "learned_source.bias", "proj_layer.weight")}[kind]
    ranks = set()
    for r, sd in zip(reps, states):
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"{folder}: the {kind} intervention on layer {r['layer']} lacks {missing} (has "
                             f"{sorted(sd)}); expected pyreft's {'/'.join(need)}")
        w = sd[need[0]]
        ranks.add(w.shape[0])
        if w.dim() != 2 or w.shape[1] != mc.hidden_size:
            raise ValueError(f"{folder}: interventions of hidden size {w.shape[-1]}, the model has "
                             f"{mc.hidden_size} (a different base model?)")
        if r["low_rank_dimension"] is not None and r["low_rank_dimension"] != w.shape[0]:
            raise ValueError(f"{folder}: config says rank {r['low_rank_dimension']}, the weights have {w.shape[0]}")
    if len(ranks) != 1:
        raise ValueError(f"{folder} mixes ranks {sorted(ranks)}: one rank per method is supported")

    mcfg = MethodConfig(method=kind, layers=sorted(set(layers)), positions=positions, share_weights=share,
                        rank=ranks.pop())
    method = build_method(mcfg, model)
    with torch.no_grad():
        for (layer, g), r, sd in zip(slots, reps, states):
            iv = method.interventions[f"{layer}_{g}"]
            if kind == "loreft":
                U = sd["rotate_layer"].float()
                err = float((U.T @ U - torch.eye(U.shape[1])).abs().max())
                if err > (1e-4 if sd["rotate_layer"].dtype in (torch.float32, torch.float64) else 2e-2):
                    raise ValueError(f"{folder}: rotate_layer of layer {r['layer']} is not orthonormal "
                                     f"(max |UᵀU − I| = {err:.1e})")
                iv.A.copy_(U)
                iv.W.weight.copy_(sd["weight"])
                iv.W.bias.copy_(sd["bias"])
            else:
                iv.W1.weight.copy_(sd["learned_source.weight"])
                iv.W1.bias.copy_(sd["learned_source.bias"])
                iv.W2.copy_(sd["proj_layer.weight"])
    return method, mcfg


def load_pyreft_run(folder: str, model, positions: str):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--load {folder}: no such folder (a train.py --out folder or a pyreft save)")
    if not positions:
        raise ValueError("a pyreft folder does not store positions: pass the --positions it was trained with "
                         "(e.g. --positions f1+l1)")
    return load_pyreft(folder, model, positions)
