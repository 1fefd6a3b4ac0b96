"""Training-step time, peak memory and generation speed of every method, against the frozen-model floor and the
peer libraries (pyreft for LoReFT/DiReFT, HF PEFT for prefix-tuning and LoRA) on the same config and weights.

  python benchmarks/bench.py --preset tiny --device cpu --threads 1 --quick --json bench_tiny.json
  python benchmarks/bench.py --preset 1b --device cuda --json bench_1b.json

What is measured (benchmarks/README.md has the details):
  train step  forward + loss + backward + AdamW step + zero_grad, as train.py does it (train.lm_loss, autocast).
              Floor: the same forward + loss + backward of the frozen model without a method, with a grad-requiring
              leaf where the method's gradient starts: the residual after block min(layers) for LoReFT/DiReFT, the
              input of block min(layers) for prefix, PEDRO and LoRA (all layers here: after block 0 / the embeddings
              output). Activation gradients only, in both; no optimizer in the floor.
  peak memory bytes in tensors: static (unique storages of weights, buffers, method, optimizer state) + the peak
              allocated during one step above what was allocated before it (CUDA: max_memory_allocated; CPU: the
              allocation events of torch.profiler(profile_memory=True), summed in time order).
  generation  tokens/s of greedy prefill + decode, fixed prompt, no EOS stop; ratio to the same model, no method.
Peers run on transformers' LlamaForCausalLM with our weights and are compared with their own floor and base.
Each figure: warm-up, then `--repeats` rounds that interleave all runs (so drift of a shared machine hits every run
alike); medians.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import reft  # noqa: E402
import train  # noqa: E402
from data import collate  # noqa: E402
from reft import PositionScheme  # noqa: E402
from support.measure import static_bytes, sync, transient_peak  # noqa: E402  (compare.py counts alike)

PRESETS = {  # tiny: the 1b shape scaled down (d_ff = 4d, 4 query heads per kv head, d_h 64, lm_head ~20% of FLOPs)
    "tiny": dict(cfg=dict(vocab_size=16384, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=2), batch=4, seq=256, dtype=torch.float32),
    "smoke": dict(cfg=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2), batch=2, seq=32, dtype=torch.float32),  # tests
    "1b": dict(cfg=dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, tie_word_embeddings=True),
               batch=8, seq=512, dtype=torch.bfloat16),
}
METHODS = "loreft,direft,prefix,pedro,lora"
PEERS = {"loreft": "pyreft-loreft", "direft": "pyreft-direft", "prefix": "peft-prefix", "lora": "peft-lora"}
INSIDE = {"loreft": False, "direft": False, "prefix": True, "pedro": True, "lora": True}  # acts inside a block?


def leaf_hook(layers, layer: int, inside: bool):
    """Floor: make the residual a grad-requiring leaf where the method's gradient would start (block `layer`'s input
    if the method acts inside the block, else its output), so the backward reaches exactly that deep."""
    if inside:
        return layers[layer].register_forward_pre_hook(lambda m, a: (a[0].detach().requires_grad_(),) + a[1:])
    return layers[layer].register_forward_hook(lambda m, a, out: out.detach().requires_grad_())


def lm_loss(logits, labels):
    """train.lm_loss itself on logits a transformers model already computed (its `model` argument just returns
    them), so the peers are scored by the very loss ours is."""
    batch = {"input_ids": labels, "attention_mask": None, "prompt_mask": None, "labels": labels}
    return train.lm_loss(lambda *args, **kwargs: logits, None, batch)


def train_step(device, loss_fn, opt=None, leaf=None):
    def step():
        hook = leaf_hook(*leaf) if leaf else None
        with train.autocast(device):
            loss = loss_fn()
        if hook:
            hook.remove()
        loss.backward()
        if opt:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step


def generation(device, new_tokens, fn):
    """fn() -> the new tokens [B, new_tokens] (asserted: no early stop)."""
    def run():
        with torch.no_grad(), train.autocast(device):
            out = fn()
        assert out.shape[1] == new_tokens, out.shape
    return run


def count_syncs(step):
    """CUDA: host-device synchronizations in one step (torch's sync debug mode warns once per sync)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def interleaved(runs: dict, device, warmup: int, repeats: int) -> dict:
    """{name: fn} -> {name: [seconds per repeat]}: warm-up each, then `repeats` rounds over all of them."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return times


def hf_copy(model, preset, ids):
    """transformers' LlamaForCausalLM with the same config and weights (None without transformers)."""
    try:
        import transformers
    except ImportError:
        return None
    with torch.device(ids.device):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**preset["cfg"], max_position_embeddings=4096))
    hf = hf.to(preset["dtype"]).eval().requires_grad_(False)
    state = {(k if k == "lm_head.weight" else "model." + k): v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    hf.generation_config.eos_token_id, hf.generation_config.pad_token_id = None, 0
    with torch.no_grad():  # the same model: the same logits
        ours = model(ids[:1, :32]).float()
        err = ((hf(input_ids=ids[:1, :32]).logits.float() - ours).abs().max() / ours.abs().max()).item()
    if err > (1e-4 if preset["dtype"] == torch.float32 else 5e-2):
        print(f"warning: transformers' Llama differs from ours by {err:.1e} (relative)", file=sys.stderr)
    return hf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--positions", default="f7+l7")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--rotation", default="qr", choices=["qr", "householder"], help="LoReFT's R (train.py --rotation)")
    ap.add_argument("--num-virtual-tokens", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64, help="generation: prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=64, help="generation: new tokens")
    ap.add_argument("--gen-batch", type=int, default=0, help="generation batch (default: the training batch)")
    ap.add_argument("--warmup", type=int, help="warm-up runs of each (default: 1 on CPU, 3 on CUDA)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, repeats, preset, N = args.device, 3 if args.quick else args.repeats, PRESETS[args.preset], args.new_tokens
    args.warmup = args.warmup if args.warmup is not None else 3 if dev.startswith("cuda") else 1
    torch.manual_seed(0)
    with torch.device(dev):
        model = M.Llama(M.LlamaConfig(**preset["cfg"], max_position_embeddings=4096))
    model = model.to(preset["dtype"]).eval().requires_grad_(False)
    cfg, B, T, GB = model.config, preset["batch"], preset["seq"], args.gen_batch or preset["batch"]
    layers, (first, last) = reft.parse_layers(args.layers, cfg.num_hidden_layers), reft.parse_positions(args.positions)
    g = torch.Generator().manual_seed(1)
    ids, pl = torch.randint(3, cfg.vocab_size, (B, T), generator=g), T // 2  # prompt: the first half, loss: the rest
    exs = [{"input_ids": r.tolist(), "labels": [-100] * pl + r[pl:].tolist(), "prompt_len": pl} for r in ids]
    batch = {k: v.to(dev) for k, v in collate(exs, 0, PositionScheme(first, last)).items()}  # train.py's batch: untied positions
    gen_ids = torch.randint(3, cfg.vocab_size, (GB, args.prompt_len), generator=g).to(dev)
    gen_mask, gen_pos = torch.ones_like(gen_ids), PositionScheme(first, last).of(args.prompt_len).expand(GB, -1, -1)
    gen_pos = gen_pos.to(dev)
    our_gen = lambda method=None, pos=None: generation(dev, N, lambda: M.generate(
        model, gen_ids, gen_mask, N, eos_id=None, method=method, positions=pos))
    low = lambda m: 0 if m in ("prefix", "lora") else min(layers)  # prefix-tuning (and our LoRA row): every layer
    floor_of = lambda lib, m: f"{lib}-floor-{'in' if INSIDE[m] else 'out'}{low(m)}"

    # runs: training steps, their static bytes, generations; rows: (name, its floor, its base, its peer)
    trains, static, gens, rows = {}, {}, {"ours-base": our_gen()}, []
    names = [m for m in args.methods.split(",") if m]
    for m in names:
        trains[floor_of("ours", m)] = train_step(dev, lambda: train.lm_loss(model, None, batch),
                                                 leaf=(model.layers, low(m), INSIDE[m]))
        static[floor_of("ours", m)] = lambda: static_bytes(model)
        method = reft.build_method(reft.MethodConfig(method=m, layers=layers, positions=args.positions, rank=args.rank,
                                                     num_virtual_tokens=args.num_virtual_tokens,
                                                     rotation=args.rotation), model).train()
        b = batch if m in ("loreft", "direft") else {k: v for k, v in batch.items() if k != "positions"}
        opt = torch.optim.AdamW(method.parameters(), lr=1e-4, weight_decay=0.0)
        trains[m] = train_step(dev, lambda method=method, b=b: train.lm_loss(model, method, b), opt)
        static[m] = lambda method=method, opt=opt: static_bytes(model, method, opt)
        gens[m] = our_gen(method, gen_pos if m in ("loreft", "direft") else None)
        rows.append((m, floor_of("ours", m), "ours-base", PEERS.get(m)))

    peers, skipped = [], {}  # (name, kind, trainable params, modules it holds, forward -> logits, generate -> ids)
    hf = None if args.no_peers else hf_copy(model, preset, batch["input_ids"])
    if hf is not None:
        hb = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        kw = dict(max_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0)
        hf_gen = lambda fn: generation(dev, N, lambda: fn()[:, args.prompt_len:])
        gens["hf-base"] = hf_gen(lambda: hf.generate(input_ids=gen_ids, attention_mask=gen_mask, **kw))
        try:
            import pyreft
            groups = reft.num_groups(first, last, False)  # untied f+l: 2 per layer, the first half = first-A group
            locs = lambda pos: {"sources->base": (None, [pos[:, g].tolist() for g in range(groups) for _ in layers])}
            tl, gl = locs(batch["positions"]), locs(gen_pos)  # [intervention][batch][position], as pyreft's trainer
            for m in [m for m in ("loreft", "direft") if m in names]:
                cls, extra = (pyreft.LoreftIntervention, {}) if m == "loreft" else \
                    (pyreft.NodireftIntervention, {"add_bias": False})
                rm = pyreft.get_reft_model(hf, pyreft.ReftConfig(representations=[
                    {"layer": l, "component": "block_output", "low_rank_dimension": args.rank,
                     "intervention": cls(embed_dim=cfg.hidden_size, low_rank_dimension=args.rank, dtype=hf.dtype,
                                         **extra)} for _ in range(groups) for l in layers]))
                peers.append((PEERS[m], m, rm.get_trainable_parameters(), (hf, rm.interventions),
                              lambda rm=rm: rm(hb, unit_locations=tl, use_cache=False)[1].logits,
                              lambda rm=rm: rm.generate({"input_ids": gen_ids, "attention_mask": gen_mask},
                                                        unit_locations=gl, intervene_on_prompt=True, **kw)[1]))
        except ImportError as e:
            skipped["pyreft"] = str(e)
        try:
            import peft
            for name, kind, pcfg in (
                    ("peft-prefix", "prefix", peft.PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                      num_virtual_tokens=args.num_virtual_tokens)),
                    ("peft-lora", "lora", peft.LoraConfig(task_type="CAUSAL_LM", r=args.rank, lora_alpha=2 * args.rank,
                                                          target_modules=["q_proj", "v_proj"], lora_dropout=0.0))):
                if kind in names or kind == "lora":
                    pm = peft.get_peft_model(copy.deepcopy(hf), pcfg)  # a copy: PEFT wraps the base or changes it
                    peers.append((name, kind, [p for p in pm.parameters() if p.requires_grad], (pm,),
                                  lambda pm=pm, uc=kind == "prefix": pm(**hb, use_cache=uc).logits,  # prefix: a cache
                                  lambda pm=pm: pm.generate(input_ids=gen_ids, attention_mask=gen_mask, **kw)))
        except ImportError as e:
            skipped["peft"] = str(e)
        for name, kind, params, holds, fwd, gen in peers:
            f = floor_of("hf", kind)
            trains[f] = train_step(dev, lambda: lm_loss(hf(**hb, use_cache=False).logits, batch["labels"]),
                                   leaf=(hf.model.layers, low(kind), INSIDE[kind]))
            static[f] = lambda: static_bytes(hf)
            opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
            trains[name] = train_step(dev, lambda fwd=fwd: lm_loss(fwd(), batch["labels"]), opt)
            static[name] = lambda holds=holds, opt=opt: static_bytes(*holds, opt)
            gens[name] = hf_gen(gen)
            rows.append((name, f, "hf-base", None))

    print(f"{args.preset} on {dev}: train B={B} T={T} (prompt {pl}), layers {args.layers}, {args.positions}, rank "
          f"{args.rank}, P={args.num_virtual_tokens}; generation B={GB}, prompt {args.prompt_len}, {N} new; "
          f"{torch.get_num_threads()} threads; {len(trains)} train runs, {len(gens)} generation runs", file=sys.stderr)
    step_t = interleaved(trains, dev, args.warmup, repeats)
    peak = {k: static[k]() + transient_peak(fn, dev) for k, fn in trains.items()}  # after warm-up: optimizer state
    syncs = {k: count_syncs(fn) for k, fn in trains.items()} if dev.startswith("cuda") else {}
    gen_t = interleaved(gens, dev, args.warmup, repeats)
    med = {k: statistics.median(v) for k, v in step_t.items()}
    tok_s = {k: GB * N / statistics.median(v) for k, v in gen_t.items()}

    pair = lambda t, a, b: statistics.median(x / y for x, y in zip(t[a], t[b]))  # per round: robust to drift
    results = []
    for name, f, base, peer in rows:
        r = {"method": name, "train_step_ratio": pair(step_t, name, f), "peak_mem_ratio": peak[name] / peak[f],
             "gen_speed_ratio": pair(gen_t, base, name), "train_step_s": med[name], "floor_step_s": med[f],
             "peak_mem_bytes": peak[name], "floor_peak_mem_bytes": peak[f], "gen_tokens_per_s": tok_s[name],
             "base_gen_tokens_per_s": tok_s[base], "floor": f, "base": base, "cuda_syncs_per_step": syncs.get(name),
             "train_step_samples_s": step_t[name], "gen_samples_s": gen_t[name]}
        if peer in trains:  # ours / theirs: step and memory < 1 = ours faster / lighter; gen tokens/s > 1 = ours faster
            r.update(peer=peer, vs_peer_step_ratio=pair(step_t, name, peer), vs_peer_mem_ratio=peak[name] / peak[peer],
                     vs_peer_gen_ratio=pair(gen_t, peer, name))
        results.append(r)

    spread = lambda v: f"{(max(v) - min(v)) / statistics.median(v):.0%}"  # (max - min) / median of the repeats
    row = lambda *cells: "| " + " | ".join(str(c) for c in cells) + " |"
    out = [row("run", "step s", "spread", "step / floor", "peak MiB", "mem / floor", "gen tok/s", "spread",
               "gen / base", "peer", "step ours/theirs", "mem ours/theirs", "gen tok/s ours/theirs"), row(*["---"] * 13)]
    for k in [k for k in trains if "floor" in k]:
        out.append(row(k, f"{med[k]:.3f}", spread(step_t[k]), "1", f"{peak[k] / 2 ** 20:.0f}", "1", *[""] * 7))
    for k in [k for k in ("ours-base", "hf-base") if k in gens]:
        out.append(row(k, *[""] * 5, f"{tok_s[k]:.1f}", spread(gen_t[k]), "1", *[""] * 4))
    for r in results:
        n, peer = r["method"], [r.get("peer", "")] + [f"{r[k]:.2f}" if k in r else "" for k in
                                                      ("vs_peer_step_ratio", "vs_peer_mem_ratio", "vs_peer_gen_ratio")]
        out.append(row(n, f"{med[n]:.3f}", spread(step_t[n]), f"{r['train_step_ratio']:.3f}",
                       f"{peak[n] / 2 ** 20:.0f}", f"{r['peak_mem_ratio']:.3f}", f"{tok_s[n]:.1f}", spread(gen_t[n]),
                       f"{r['gen_speed_ratio']:.3f}", *peer))
    print("\n".join(out + [f"skipped {k}: {v}" for k, v in skipped.items()] +
                    ([f"CUDA syncs per training step: {syncs}"] if syncs else [])))
    if args.json:
        setting = {**vars(args), "repeats": repeats, "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "train_batch": B, "seq": T, "prompt_len_train": pl, "gen_batch": GB, "model": preset["cfg"],
                   "dtype": str(preset["dtype"]), "device_name": torch.cuda.get_device_name() if dev.startswith(
                       "cuda") else None}
        with open(args.json, "w") as fh:
            json.dump({"setting": setting, "methods": results, "floors": {k: {"step_s": med[k], "peak_mem_bytes":
                       peak[k], "samples_s": step_t[k]} for k in trains if "floor" in k},
                       "base_gen_tokens_per_s": {k: tok_s[k] for k in ("ours-base", "hf-base") if k in tok_s},
                       "skipped": skipped}, fh, indent=1)


if __name__ == "__main__":
    main()
