"""Part `attention` (WALKTHROUGH.md §4): model.KVCache.update and model.LlamaAttention.forward.

  KVCache.update          write k, v [B, H_kv, T, d_h] at slots [length, length + T) of the layer; return all so far
  LlamaAttention.forward  q, k, v projections -> heads [B, H, T, d_h] -> RoPE on q and k -> cache -> causal (or
                          masked) softmax(q·kᵀ / sqrt(d_h))·v with grouped-query heads (query head h reads key/value
                          head h // (H / H_kv)) -> o_proj

Each test builds the attention module alone, with cos/sin and masks made here (not by the student's other code).
Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import math

import torch

import model as M

H, H_KV, D_H, D = 4, 2, 8, 32  # query heads, key/value heads, head size, model width
G = H // H_KV  # query heads per key/value head


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _cfg(**kw):
    return M.LlamaConfig(**{**dict(vocab_size=64, hidden_size=D, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=H, num_key_value_heads=H_KV, head_dim=D_H,
                                   attention_bias=True), **kw})


def _attention(seed=0, **kw):
    """Our attention layer with random weights (biases too) far from the default init."""
    attn = M.LlamaAttention(_cfg(**kw), 0)
    g = _gen(seed)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.ndim > 1 else 0.2))
    return attn.eval()


def _cos_sin(B, T, start=0, d=D_H):
    """Half-split cos/sin [B, 1, T, d] of positions start .. start + T - 1 (made here, not by rope_cos_sin)."""
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = (torch.arange(start, start + T, dtype=torch.float64)[:, None] * inv_freq).repeat(1, 2)  # [T, d]
    return ang.cos().float().expand(B, 1, T, d), ang.sin().float().expand(B, 1, T, d)


def _rope(x, cos, sin):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _naive(attn, x, cos, sin, mask, kv_head=lambda h: h // G, rope_k=True, scale=1 / math.sqrt(D_H)):
    """softmax(q·kᵀ·scale + mask)·v written out per query head, in fp64, then o_proj. mask: bool [B, 1, T, T]."""
    B, T, _ = x.shape
    xd = x.double()
    lin = lambda m, t: t @ m.weight.double().T + m.bias.double()  # noqa: E731
    q = lin(attn.q_proj, xd).view(B, T, H, D_H).transpose(1, 2)
    k = lin(attn.k_proj, xd).view(B, T, H_KV, D_H).transpose(1, 2)
    v = lin(attn.v_proj, xd).view(B, T, H_KV, D_H).transpose(1, 2)
    cos, sin = cos.double(), sin.double()
    q, k = _rope(q, cos, sin), (_rope(k, cos, sin) if rope_k else k)
    heads = []
    for h in range(H):
        j = kv_head(h)
        s = q[:, h] @ k[:, j].transpose(-1, -2) * scale  # [B, T, T]
        if mask is not None:
            s = s.masked_fill(~mask[:, 0], float("-inf"))
        heads.append(torch.softmax(s, -1) @ v[:, j])  # [B, T, d_h]
    y = torch.stack(heads, 2).reshape(B, T, H * D_H)
    return lin(attn.o_proj, y)


def _causal(B, T):
    return torch.ones(T, T, dtype=torch.bool).tril().expand(B, 1, T, T)


def _check(y, attn, x, cos, sin, mask, what):
    """y against the closed form; when it differs, name the mistake the output matches."""
    assert y.shape == x.shape, f"attention must return [B, T, d] = {tuple(x.shape)}, got {tuple(y.shape)}"
    y = y.double()
    close = lambda want: bool(torch.allclose(y, want, atol=1e-4))  # noqa: E731
    if close(_naive(attn, x, cos, sin, mask)):
        return
    if mask is not None and not bool(mask.all()) and close(_naive(attn, x, cos, sin, None)):
        raise AssertionError(f"{what}: the mask is ignored, so tokens attend to later (or padding) tokens: "
                             "the causal mask is missing")
    causal = _causal(*x.shape[:2])
    if mask is not None and not torch.equal(mask, causal) and close(_naive(attn, x, cos, sin, causal)):
        raise AssertionError(f"{what}: the given mask is ignored (plain causal attention instead): pass it to the "
                             "attention as attn_mask")
    if close(_naive(attn, x, cos, sin, mask, kv_head=lambda h: h % H_KV)):
        raise AssertionError(f"{what}: key/value head j must serve query heads j*g .. (j+1)*g-1 (GQA: query head h "
                             "reads key/value head h // g, as repeat_interleave or enable_gqa do), not h % H_kv")
    if close(_naive(attn, x, cos, sin, mask, scale=1.0)) or close(_naive(attn, x, cos, sin, mask, scale=1 / D_H)):
        raise AssertionError(f"{what}: scores must be scaled by 1/sqrt(d_h)")
    if close(_naive(attn, x, cos, sin, mask, rope_k=False)):
        raise AssertionError(f"{what}: RoPE must rotate the keys as well as the queries")
    err = float((y - _naive(attn, x, cos, sin, mask)).abs().max())
    raise AssertionError(f"{what}: differs from softmax(q·kᵀ/sqrt(d_h) + mask)·v then o_proj by {err:.2e} (heads: "
                         "[B, T, H·d_h] -> [B, T, H, d_h] -> [B, H, T, d_h]; RoPE on q and k; GQA h -> h // g)")


def test_attention_causal_closed_form():
    attn, B, T = _attention(seed=1), 2, 6
    x = torch.randn(B, T, D, generator=_gen(2))
    cos, sin = _cos_sin(B, T)
    with torch.no_grad():
        y = attn(x, cos, sin, None, None, None, None)
    _check(y, attn, x, cos, sin, _causal(B, T), "attention with mask=None (causal)")


def test_attention_is_causal_without_mask():
    attn, B, T = _attention(seed=3), 1, 5
    x = torch.randn(B, T, D, generator=_gen(4))
    cos, sin = _cos_sin(B, T)
    x2 = x.clone()
    x2[:, -1] += 1.0  # change only the last token
    with torch.no_grad():
        y, y2 = attn(x, cos, sin, None, None, None, None), attn(x2, cos, sin, None, None, None, None)
    assert float((y[:, :-1] - y2[:, :-1]).abs().max()) < 1e-6, \
        "a token attends to later tokens: the causal mask is missing (mask=None means causal over the T tokens)"
    assert float((y[:, -1] - y2[:, -1]).abs().max()) > 1e-4, "the last token's output must depend on its own input"


def test_attention_uses_the_given_boolean_mask():
    attn, B, T = _attention(seed=5), 2, 5
    x = torch.randn(B, T, D, generator=_gen(6))
    cos, sin = _cos_sin(B, T)
    mask = _causal(B, T).clone()
    mask[1, :, :, :2] = False  # row 1: two left-padding keys no query may see ...
    mask[1, :, torch.arange(2), torch.arange(2)] = True  # ... except each padding query itself (no empty softmax)
    mask[0, :, 1, 3] = True  # row 0: one query may see a later key (the mask, not causality, decides)
    with torch.no_grad():
        y = attn(x, cos, sin, mask, None, None, None)
    _check(y, attn, x, cos, sin, mask, "attention with a boolean mask (True = may attend)")


def test_attention_gqa_head_mapping():
    attn = _attention(seed=7)
    B, T = 1, 3
    with torch.no_grad():  # value head j outputs the constant j + 1; o_proj is the identity: y shows who read what
        attn.v_proj.weight.zero_()
        attn.v_proj.bias.copy_(torch.arange(1, H_KV + 1).float().repeat_interleave(D_H))
        attn.o_proj.weight.copy_(torch.eye(D))
        attn.o_proj.bias.zero_()
        y = attn(torch.randn(B, T, D, generator=_gen(8)), *_cos_sin(B, T), None, None, None, None)
    read = y[0].view(T, H, D_H) - 1  # [T, H, d_h]: the value head each query head read, at every position
    got, want = [round(float(r)) for r in read[-1, :, 0]], [h // G for h in range(H)]
    assert torch.allclose(read, read[:1, :, :1].expand_as(read), atol=1e-5), \
        "each query head must read exactly one key/value head (its output is that head's constant value)"
    assert got == want, f"key/value head j must serve query heads j*g .. (j+1)*g-1 (GQA, g = {G}): query heads " \
                        f"0..{H - 1} read value heads {got}, expected {want}"


def test_attention_matches_transformers():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention
    cfg = LlamaConfig(hidden_size=D, num_attention_heads=H, num_key_value_heads=H_KV, head_dim=D_H,
                      attention_bias=True)
    cfg._attn_implementation = "eager"  # the plain matmul-softmax-matmul reference
    ours = _attention(seed=9)
    theirs = LlamaAttention(cfg, 0).eval()
    theirs.load_state_dict(ours.state_dict())
    B, T = 2, 7
    x = torch.randn(B, T, D, generator=_gen(10))
    cos, sin = _cos_sin(B, T, start=3)
    additive = torch.zeros(B, 1, T, T).masked_fill(~_causal(B, T), float("-inf"))
    with torch.no_grad():
        want, _ = theirs(x, position_embeddings=(cos[:, 0], sin[:, 0]), attention_mask=additive)
        got = ours(x, cos, sin, None, None, None, None)
    err = float((got - want).abs().max())
    assert err < 1e-5, f"LlamaAttention differs from transformers' (eager, causal) by {err:.2e}: check the q/k/v " \
                       "projections, the head reshape, RoPE on q and k, GQA, the 1/sqrt(d_h) scale and o_proj"


def test_kv_cache_update_appends_and_returns_everything():
    B, T1, T2, L = 2, 3, 2, 2
    cache = M.KVCache(L, B, 8, H_KV, D_H)
    k1, v1 = torch.randn(B, H_KV, T1, D_H, generator=_gen(11)), torch.randn(B, H_KV, T1, D_H, generator=_gen(12))
    k2, v2 = torch.randn(B, H_KV, T2, D_H, generator=_gen(13)), torch.randn(B, H_KV, T2, D_H, generator=_gen(14))
    k, v = cache.update(1, k1, v1)
    assert k.shape == v.shape == (B, H_KV, T1, D_H) and torch.equal(k, k1) and torch.equal(v, v1), \
        "KVCache.update on an empty cache must return the keys and values just written"
    cache.length += T1  # the model advances length once per forward, after all layers
    k, v = cache.update(1, k2, v2)
    assert k.shape[2] == T1 + T2, \
        f"KVCache.update must return all keys and values so far (past then new, {T1 + T2} positions), " \
        f"not only the new ones: got {k.shape[2]} positions"
    assert torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(v, torch.cat([v1, v2], 2)), \
        "KVCache.update must write the new keys and values after the filled slots [length, length + T), " \
        "not from slot 0, and return past then new"
    assert torch.equal(cache.k[1][:, :, T1:T1 + T2], k2) and torch.equal(cache.v[1][:, :, T1:T1 + T2], v2), \
        "KVCache.update must store the new keys and values in the cache's own tensors at [length, length + T)"
    assert not cache.k[0].any() and not cache.v[0].any() and not cache.k[1][:, :, T1 + T2:].any(), \
        "KVCache.update must write only its own layer's slots [length, length + T)"
    assert cache.length == T1, "KVCache.update must not advance length (the model does, once per forward)"


def test_attention_decode_with_cache_equals_full_attention():
    attn, B, T, P = _attention(seed=15), 2, 6, 3  # prefill P tokens, then one token per call
    x = torch.randn(B, T, D, generator=_gen(16))
    cos, sin = _cos_sin(B, T)
    cache = M.KVCache(1, B, T, H_KV, D_H)
    with torch.no_grad():
        full = attn(x, cos, sin, None, None, None, None)
        steps = [attn(x[:, :P], cos[:, :, :P], sin[:, :, :P], None, cache, None, None)]
        cache.length += P
        for t in range(P, T):
            steps.append(attn(x[:, t:t + 1], cos[:, :, t:t + 1], sin[:, :, t:t + 1], None, cache, None, None))
            cache.length += 1
    got = torch.cat(steps, 1)
    assert got.shape == full.shape, f"attention with a cache must return [B, T, d], got {tuple(got.shape)}"
    assert torch.allclose(got[:, :P], full[:, :P], atol=1e-5), "prefill through a KVCache must equal attention " \
                                                              "without one (causal over the prompt)"
    err = float((got[:, P:] - full[:, P:]).abs().max())
    assert err < 1e-5, f"decode with a KVCache differs from full attention by {err:.2e}: a one-token step must " \
                       "store its rotated key/value in the cache and attend over everything cache.update returns"
    assert torch.allclose(cache.k[0], _rope(attn.k_proj(x).view(B, T, H_KV, D_H).transpose(1, 2), cos, sin),
                          atol=1e-5), "the cache must hold the keys after RoPE (rotated once, at their own position)"
