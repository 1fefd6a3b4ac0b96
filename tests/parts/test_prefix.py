"""Part `prefix` (WALKTHROUGH.md §10): prefix-tuning's three regions.

- reft.PrefixTuning.extra_kv (seam 3): layer l's P learned keys and values, as [B, H_kv, P, d_h], before the real
  keys and values on the key axis;
- model.LlamaAttention.forward: the prefix keys/values go before the real ones on the key axis, as stored (the prefix
  keys are never rotated by RoPE; the real keys were rotated just above);
- model.Llama.forward: with a prefix, real tokens' RoPE positions start at P (P, P+1, ...), at prefill and decode.

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import math

import torch

import model as M
import reft

P = 3  # virtual tokens
CFG = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)  # d_h = 16, GQA: 2 query heads per key/value head
L, H, H_KV, D_H = 2, 4, 2, 16


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _llama(seed=0):
    """A tiny random LLaMA (norm weights randomised too, so every weight matters)."""
    torch.manual_seed(seed)
    model = M.Llama(M.LlamaConfig(**CFG)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=_gen(seed + 1)))
    return model.requires_grad_(False)


def _prefix(seed=0, std=1.0, num_layers=L, n_kv=H_KV, head_dim=D_H):
    """A PrefixTuning with O(1) keys and values, so the prefix visibly changes every output."""
    method = reft.PrefixTuning(num_layers, n_kv, head_dim, P)
    with torch.no_grad():
        method.prefix.copy_(std * torch.randn(method.prefix.shape, generator=_gen(seed)))
    return method


def _hf_llama(model):
    """transformers' LlamaForCausalLM holding the same weights as our `model`."""
    from transformers import LlamaConfig, LlamaForCausalLM
    hf = LlamaForCausalLM(LlamaConfig(**CFG, rms_norm_eps=1e-6, tie_word_embeddings=False)).eval()
    sd = {(k if k == "lm_head.weight" else "model." + k): v for k, v in model.state_dict().items()}
    hf.load_state_dict(sd, strict=True)
    return hf


def _batch(T=7, seed=123):
    """Two prompts of T tokens, the second left-padded by 2 (pad id 0, mask 0)."""
    ids = torch.randint(3, CFG["vocab_size"], (2, T), generator=_gen(seed))
    mask = torch.ones(2, T, dtype=torch.long)
    ids[1, :2], mask[1, :2] = 0, 0
    return ids, mask


def _rope(x, pos, theta=10000.0):
    """Half-split RoPE in fp64: x [B, H, T, d_h], pos [B, T] (or [T])."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[..., None] * inv_freq
    ang = torch.cat([ang, ang], -1)
    if ang.dim() == 3:
        ang = ang[:, None]  # [B, 1, T, d_h]
    x1, x2 = x.chunk(2, -1)
    return x * ang.cos() + torch.cat([-x2, x1], -1) * ang.sin()


def _attend(q, k, v, mask):
    """softmax(q kᵀ / sqrt(d_h), masked) v in fp64; GQA: query head h reads key/value head h // (H / H_kv)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


# -----------------------------------------------------------------------------------------------------------------


def prefix_of(method, layer: int, B: int):
    """The keys and values extra_kv puts before B rows of no real keys: the layer's prefix alone."""
    H, d = method.kv_shape[1], method.kv_shape[2]
    try:
        out = method.extra_kv(layer, torch.zeros(B, H, 0, d), torch.zeros(B, H, 0, d))
    except RuntimeError as e:
        raise AssertionError(f"extra_kv must put the layer's P keys and values before every row's own: expand them to "
                             f"every row, [B, H_kv, P, d_h] ({type(e).__name__}: {e})") from None
    assert out is not None and len(out) == 2, "extra_kv must return a pair (keys, values)"
    return out


def test_extra_kv_puts_the_layers_keys_and_values_first_for_every_row():
    method = _prefix(num_layers=3, n_kv=2, head_dim=8)
    B = 4
    for layer in range(3):
        out = prefix_of(method, layer, B)
        assert out is not None and len(out) == 2, "extra_kv must return a pair (keys, values)"
        k, v = out
        assert tuple(k.shape) == tuple(v.shape) == (B, 2, P, 8), \
            f"extra_kv must return [B, H_kv, P, d_h] = {(B, 2, P, 8)} for keys and values, got {tuple(k.shape)} " \
            f"and {tuple(v.shape)}"
        want_k, want_v = method.prefix[layer, 0], method.prefix[layer, 1]
        if torch.equal(k[0], want_v) and torch.equal(v[0], want_k):
            raise AssertionError("extra_kv returns the keys and values swapped: keys are layer_kv(l)[0], values "
                                 "layer_kv(l)[1]")
        for b in range(B):
            assert torch.equal(k[b], want_k) and torch.equal(v[b], want_v), \
                f"extra_kv({layer}, k, v) must give every row b the keys prefix[{layer}, 0] and the values " \
                f"prefix[{layer}, 1] (layer {layer}'s own, the same for every row)"
    # the keys and values stay tied to the trainable prefix: a gradient reaches exactly layer 1's entries
    k, v = prefix_of(method, 1, 2)
    (k.sum() + 2 * v.sum()).backward()
    grad = method.prefix.grad
    assert grad is not None, "extra_kv must keep the graph to the prefix parameter (no detach, no torch.tensor copy)"
    want = torch.zeros_like(grad)
    want[1, 0], want[1, 1] = 2.0, 4.0  # summed over the B = 2 rows
    assert torch.equal(grad, want), \
        "the gradient of extra_kv(1, k, v) must reach layer 1's keys (prefix[1, 0]) and values (prefix[1, 1]) only, " \
        "once per row"


def test_extra_kv_uses_layer_kv_with_the_reparametrization():
    torch.manual_seed(0)
    method = reft.PrefixTuning(2, 2, 8, P, projection=True, hidden=16)  # no `prefix` tensor: an MLP makes it
    try:
        k, v = prefix_of(method, 1, 3)
    except (TypeError, AttributeError) as e:
        raise AssertionError(f"extra_kv must read a layer's keys/values through self.layer_kv(layer) (with "
                             f"projection=True self.prefix is None): {type(e).__name__}: {e}") from None
    kv = method.layer_kv(1)  # [2, H_kv, P, d_h]
    assert tuple(k.shape) == tuple(v.shape) == (3, 2, P, 8), \
        f"extra_kv must return [B, H_kv, P, d_h] = {(3, 2, P, 8)}, got {tuple(k.shape)} and {tuple(v.shape)}"
    for b in range(3):
        assert torch.allclose(k[b], kv[0], atol=1e-6, rtol=0) and torch.allclose(v[b], kv[1], atol=1e-6, rtol=0), \
            "extra_kv(l, k, v) must return layer_kv(l)[0] (keys) and layer_kv(l)[1] (values) for every row"
    (k.sum() + v.sum()).backward()
    assert method.embedding.grad is not None and method.embedding.grad.abs().sum() > 0, \
        "with projection=True the gradient must flow through extra_kv into the MLP and its embedding"


def test_prefix_attention_over_prefix_then_real_keys_closed_form():
    """One attention layer by hand: K = [K_prefix ; rope(K(x))], V = [V_prefix ; V(x)], prefix keys not rotated."""
    cfg = M.LlamaConfig(**CFG)
    torch.manual_seed(3)
    attn = M.LlamaAttention(cfg, layer=1).eval()
    method = _prefix(seed=4)
    B, T = 2, 5
    x = torch.randn(B, T, cfg.hidden_size, generator=_gen(5))
    pos = (P + torch.arange(T))[None].expand(B, T)  # real tokens at P, P+1, ...
    d_h = D_H
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, d_h, 2, dtype=torch.float64) / d_h)
    ang = pos.double()[..., None] * inv_freq
    ang = torch.cat([ang, ang], -1)[:, None]  # [B, 1, T, d_h]
    cos, sin = ang.cos().float(), ang.sin().float()
    mask = torch.ones(B, 1, T, P + T, dtype=torch.bool)
    mask[..., P:] = torch.ones(T, T, dtype=torch.bool).tril()  # every prefix slot visible, causal over real tokens
    with torch.no_grad():
        y = attn(x, cos, sin, mask, None, method, None).double()
        W = {n: getattr(attn, n).weight.double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
        xd = x.double()
        q = (xd @ W["q_proj"].T).view(B, T, H, d_h).transpose(1, 2)
        k = (xd @ W["k_proj"].T).view(B, T, H_KV, d_h).transpose(1, 2)
        v = (xd @ W["v_proj"].T).view(B, T, H_KV, d_h).transpose(1, 2)
        q, k = _rope(q, pos), _rope(k, pos)
        pk = method.prefix[1, 0].double().expand(B, -1, -1, -1)  # layer 1's keys [B, H_kv, P, d_h]
        pv = method.prefix[1, 1].double().expand(B, -1, -1, -1)

        def out(keys, values):
            return (_attend(q, keys, values, mask).transpose(1, 2).reshape(B, T, H * d_h)) @ W["o_proj"].T

        want = out(torch.cat([pk, k], 2), torch.cat([pv, v], 2))
        wrong = {  # what plausible mistakes produce
            "prefix keys must not be rotated by RoPE (they are used as stored; only the real keys are rotated)":
                [out(torch.cat([_rope(pk, torch.arange(P)), k], 2), torch.cat([pv, v], 2)),
                 out(torch.cat([_rope(pk, pos[:, :P]), k], 2), torch.cat([pv, v], 2))],
            "prefix keys/values must come before the real ones on the key axis ([prefix; real], dim 2)":
                [out(torch.cat([k, pk], 2), torch.cat([v, pv], 2))],
            "prefix keys and values are swapped: the prefix keys go with the keys, the prefix values with the values":
                [out(torch.cat([pv, k], 2), torch.cat([pk, v], 2))],
        }
    assert y.shape == want.shape, f"attention with a prefix must return [B, T, d] = {tuple(want.shape)}, got " \
                                  f"{tuple(y.shape)}"
    if not torch.allclose(y, want, atol=1e-5, rtol=1e-4):
        for message, outs in wrong.items():
            if any(torch.allclose(y, o, atol=1e-5, rtol=1e-4) for o in outs):
                raise AssertionError(message)
        raise AssertionError(f"attention over [prefix; real] keys differs from the closed form by "
                             f"{float((y - want).abs().max()):.2e}")


def test_prefix_real_tokens_rope_positions_start_at_P():
    """transformers' LLaMA with the prefix as its past keys/values: real tokens at positions P + 0, P + 1, ..."""
    from transformers import DynamicCache
    model, method = _llama(), _prefix(seed=6)
    hf = _hf_llama(model)
    ids, mask = _batch()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0

    def hf_logits(ids, mask, pos):
        past = DynamicCache([(method.prefix[l, 0].expand(2, -1, -1, -1).clone(),
                              method.prefix[l, 1].expand(2, -1, -1, -1).clone()) for l in range(L)])
        return hf(input_ids=ids, attention_mask=torch.cat([torch.ones(2, P, dtype=torch.long), mask], 1),
                  cache=past, position_ids=pos).logits

    for padded in (True, False):  # left padding (an attention mask), then none (attention_mask=None)
        if not padded:
            ids, mask = ids[:, 2:], torch.ones_like(ids[:, 2:])
            pos = torch.arange(ids.shape[1])[None].expand(2, -1)
        real = mask.bool()
        with torch.no_grad():
            try:
                ours = model(ids, mask if padded else None, method=method)
            except RuntimeError as e:
                if isinstance(e, NotImplementedError) or padded:
                    raise
                raise AssertionError(f"a prefix forward without an attention mask fails (there `pos` is an expanded "
                                     f"view: add the offset out of place, pos = pos + P): {e}") from None
            want, unshifted = hf_logits(ids, mask, pos + P), hf_logits(ids, mask, pos)
            base = model(ids, mask if padded else None)
        assert (want - base)[real].abs().max() > 1e-2  # the prefix matters: the comparison is not vacuous
        assert ours.shape == want.shape, f"logits must be [B, T, vocab] = {tuple(want.shape)}, got " \
                                         f"{tuple(ours.shape)}"
        err = float((ours - want)[real].abs().max())
        if err > 1e-4 and float((ours - unshifted)[real].abs().max()) < 1e-4:
            raise AssertionError("real tokens' RoPE positions must start at P (after the prefix), not at 0")
        assert err < 1e-4, f"Llama with a prefix ({'left-padded' if padded else 'no attention mask'}) differs from " \
                           f"transformers' LLaMA given the prefix as past keys/values (real tokens at RoPE positions " \
                           f"P, P+1, ...) by {err:.2e}"


def test_prefix_matches_peft_prefix_tuning():
    """PEFT's prefix tuning (with the paper's MLP reparametrization) on transformers' LlamaForCausalLM, same weights;
    PEFT's forward (its cached `generate` drops the prefix with transformers 5.x)."""
    import peft
    model = _llama(seed=7)
    hf = _hf_llama(model)
    torch.manual_seed(8)
    pm = peft.get_peft_model(hf, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                                         prefix_projection=True, encoder_hidden_size=24)).eval()
    enc = pm.prompt_encoder["default"]
    method = reft.PrefixTuning(L, H_KV, D_H, P, projection=True, hidden=24)
    with torch.no_grad():  # same reparametrization, same weights (PEFT's output layout is ours)
        method.embedding.copy_(enc.embedding.weight)
        for i in (0, 2):
            method.mlp[i].load_state_dict(enc.transform[i].state_dict())
    ids, mask = _batch(seed=9)
    real = mask.bool()
    with torch.no_grad():
        ours = model(ids, mask, method=method)
        theirs = pm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        base = model(ids, mask)
    assert (theirs - base)[real].abs().max() > 1e-3  # the prefix matters: the comparison is not vacuous
    err = float((ours - theirs)[real].abs().max())
    assert err < 1e-4, f"Llama with a prefix differs from PEFT's prefix tuning on transformers' LLaMA by {err:.2e}"


def test_prefix_decode_with_kv_cache_equals_recompute():
    """Prefill (prefix + prompt into the cache), then one token per call: the logits of one uncached forward over the
    whole sequence. Decode steps add no prefix again and keep counting RoPE positions after the prefix."""
    model, method = _llama(seed=10), _prefix(seed=11)
    ids, mask = _batch(T=6, seed=12)
    new = torch.randint(3, CFG["vocab_size"], (2, 4), generator=_gen(13))
    B, T = ids.shape
    with torch.no_grad():
        cache = model.new_cache(B, P + T + new.shape[1])
        steps, m = [model(ids, mask, cache, method)[:, -1]], mask
        for i in range(new.shape[1] - 1):
            m = torch.cat([m, m.new_ones(B, 1)], 1)
            steps.append(model(new[:, i:i + 1], m, cache, method)[:, -1])
        cached = torch.stack(steps, 1)
        full = model(torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1), None, method)[:, T - 1:-1]
    assert cache.length == P + T + new.shape[1] - 1, "the cache must hold the P prefix slots and every real token"
    err0 = float((cached[:, 0] - full[:, 0]).abs().max())
    assert err0 < 1e-4, f"the prefill's last logits with a KV cache differ from the uncached forward by {err0:.2e}"
    err = float((cached - full).abs().max())
    assert err < 1e-4, f"decode steps after a prefix differ from recomputing the whole sequence by {err:.2e}: decode " \
                       f"steps' RoPE positions must also start after the prefix (P + index of the real token)"


def test_prefix_every_layers_keys_and_values_get_a_gradient():
    model = _llama(seed=14)
    method = _prefix(seed=15, std=0.02)  # the method's own init scale
    ids, mask = _batch(seed=16)
    logits = model(ids, mask, method=method)
    logits[mask.bool()].logsumexp(-1).sum().backward()
    grad = method.prefix.grad
    assert grad is not None, "the prefix must receive a gradient through the model's forward"
    per = grad.flatten(2).abs().sum(-1)  # [L, 2]
    for layer in range(L):
        for i, name in enumerate(("keys", "values")):
            assert per[layer, i] > 0, f"layer {layer}'s prefix {name} get no gradient: every layer's attention " \
                                      f"must use its own prefix keys and values"
    assert all(p.grad is None for p in model.parameters()), "the base model must stay frozen"
