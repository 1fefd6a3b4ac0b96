"""benchmarks/bench.py still runs and writes what the README's tables are made of. Not a timing test: the figures of
a 2-layer, 64-wide model on a shared CPU mean nothing; only their presence and sanity are checked."""
import json
import math
import sys

import torch

import model as M
import reft
import train
from conftest import REPO
from data import collate
from reft import PositionScheme

sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402

KEYS = {"method", "train_step_ratio", "peak_mem_ratio", "gen_speed_ratio", "train_step_s", "floor_step_s",
        "peak_mem_bytes", "floor_peak_mem_bytes", "gen_tokens_per_s", "base_gen_tokens_per_s"}


def test_bench_writes_every_method_and_ratio(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--preset", "smoke", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--prompt-len", "8",
                "--new-tokens", "4", "--no-peers", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["methods"]}
    assert set(rows) == {"loreft", "direft", "prefix", "pedro", "lora"}
    for r in rows.values():
        assert KEYS <= set(r), KEYS - set(r)
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in KEYS - {"method"}), r
    assert result["setting"]["preset"] == "smoke" and result["skipped"] == {}
    # the floors: frozen-model forward + backward reaching block 0's output (ReFT) or input (prefix, PEDRO)
    assert set(result["floors"]) == {"ours-floor-out0", "ours-floor-in0"}


def saved_for_backward(loss_fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of loss_fn() (what activation memory is made of)."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn()
    return sum(kept.values())


def test_methods_keep_no_more_activations_than_the_frozen_model():
    """Deterministic memory accounting (no timing): with the frozen model's backward reaching the same depth, LoReFT
    and DiReFT keep only their r-wide rows, PEDRO only its scaled q and v (the FFN scale is recomputed in the
    backward), prefix-tuning only its P extra keys/values. Catches e.g. a gather that keeps all of h per layer."""
    cfg = M.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    model = M.Llama(cfg).requires_grad_(False)
    B, T = 2, 256
    ids = torch.randint(3, 128, (B, T))
    batch = collate([{"input_ids": r.tolist(), "labels": [-100] * 64 + r[64:].tolist(), "prompt_len": 64}
                     for r in ids], 0, PositionScheme(7, 7))
    act = B * T * cfg.hidden_size * 4  # bytes of one fp32 residual [B, T, d]
    for name, inside in (("loreft", False), ("direft", False), ("prefix", True), ("pedro", True)):
        leaf = bench.leaf_hook(model.layers, 0, inside)  # the floor: gradient from block 0's output / input on
        floor = saved_for_backward(lambda: train.lm_loss(model, None, batch))
        leaf.remove()
        method = reft.build_method(reft.MethodConfig(method=name, layers=list(range(4)), positions="f7+l7", rank=8,
                                                     num_virtual_tokens=8), model)
        b = batch if name in ("loreft", "direft") else {k: v for k, v in batch.items() if k != "positions"}
        extra = saved_for_backward(lambda: train.lm_loss(model, method, b)) - floor
        # ReFT: its 14 rows per layer and R's factors, under one residual in all (keeping h once per layer and group
        # would be 8); prefix: 8 more keys/values per layer; PEDRO: q [B, T, H·d_h] and v [B, T, H_kv·d_h] per layer,
        # 1.5 residuals each (keeping l_u ⊙ up too would add 4 per layer)
        allowed = {"loreft": act, "direft": act, "prefix": act // 2, "pedro": 7 * act}[name]
        assert extra <= allowed, (name, extra, allowed)  # (prefix can come out below: another SDPA kernel)
