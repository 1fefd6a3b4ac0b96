"""Part `attention` (WALKTHROUGH.md §4): model.attention, model.KVCache.update, LlamaAttention.heads and .attend.

  attention               softmax(q·kᵀ / sqrt(d_h) + mask)·v with grouped-query heads (query head h reads key/value
                          head h // (H / H_kv)); mask=None: causal over the T queries, or (T = 1) the whole past
  KVCache.update          write k, v [B, H_kv, T, d_h] at slots [length, length + T) of the layer; return all so far
  LlamaAttention.heads    projections [B, T, H·d_h] -> heads [B, H, T, d_h] (H_kv for k, v), apply_rope on q and k
  LlamaAttention.attend   cache.update, attention, heads merged back to [B, T, H·d_h], o_proj

Each case builds inputs from a seed, runs the student's code and returns its outputs; the grader compares them with
the reference's (teach/expected/attention.pt). RoPE is another part: here apply_rope is replaced by a stand-in (any
function of the right shape), and cos/sin are random tensors. No case holds the solution."""
import torch

from grading import Case, generator, stand_in

H, H_KV, D_H, D = 4, 2, 8, 32  # query heads, key/value heads (grouped-query: 2 per kv head), head size, width


def _fake_rope(x, cos, sin):
    """The stand-in for model.apply_rope (not RoPE: any function of x, cos, sin of the right shape)."""
    return x * cos + sin


def _qkv(seed, offset, B, T, S):
    g = generator(seed, offset)
    return (torch.randn(B, H, T, D_H, generator=g), torch.randn(B, H_KV, S, D_H, generator=g),
            torch.randn(B, H_KV, S, D_H, generator=g))


def _layer(M, seed, offset):
    """A LlamaAttention with random weights and biases, far from the default init."""
    cfg = M.LlamaConfig(vocab_size=64, hidden_size=D, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=H, num_key_value_heads=H_KV, head_dim=D_H, attention_bias=True)
    attn = M.LlamaAttention(cfg, 0)
    g = generator(seed, offset)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.ndim > 1 else 0.2))
    return attn.eval()


def _cos_sin(seed, offset, B, T):
    g = generator(seed, offset)
    return torch.rand(B, 1, T, D_H, generator=g) * 2 - 1, torch.rand(B, 1, T, D_H, generator=g) * 2 - 1


# -----------------------------------------------------------------------------------------------------------------
# model.attention


def run_is_causal_without_mask(seed):
    import model as M
    q, k, v = _qkv(seed, 1, 2, 5, 5)
    return {"y": M.attention(q, k, v, None)}


def run_decode_step_sees_the_whole_past(seed):
    import model as M
    q, k, v = _qkv(seed, 2, 2, 1, 6)  # one query (a decode step) over 6 keys: 5 cached and its own
    return {"y": M.attention(q, k, v, None)}


def run_uses_the_given_boolean_mask(seed):
    import model as M
    B, T = 2, 5
    q, k, v = _qkv(seed, 3, B, T, T)
    padding = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # left padding: one token in row 0, two in row 1
    mask = M.attention_mask_4d(padding, 0, T, causal=True).clone()  # [B, 1, T, T], True = may attend
    mask[0, :, 1, 3] = True  # row 0: one query may see a later key (the mask, not causality, decides)
    return {"y": M.attention(q, k, v, mask)}


def run_gqa_head_mapping(seed):
    import model as M
    q, k, _ = _qkv(seed, 4, 1, 3, 3)
    values = 1 + torch.rand(H_KV, generator=generator(seed, 5))  # value head j holds one constant: y shows who read it
    v = values[None, :, None, None].expand(1, H_KV, 3, D_H).contiguous()
    return {"y": M.attention(q, k, v, None)}


# -----------------------------------------------------------------------------------------------------------------
# KVCache.update


def run_kv_cache_update(seed):
    import model as M
    B, T1, T2 = 2, 3, 2
    g = generator(seed, 6)
    k1, v1 = torch.randn(B, H_KV, T1, D_H, generator=g), torch.randn(B, H_KV, T1, D_H, generator=g)
    k2, v2 = torch.randn(B, H_KV, T2, D_H, generator=g), torch.randn(B, H_KV, T2, D_H, generator=g)
    cache = M.KVCache(2, B, 8, H_KV, D_H)
    first_k, first_v = cache.update(1, k1, v1)  # prefill of layer 1
    cache.length += T1  # the model advances length once per forward, after all layers
    second_k, second_v = cache.update(1, k2, v2)
    return {"prefill_k": first_k, "prefill_v": first_v, "next_k": second_k, "next_v": second_v,
            "cache_k": torch.stack(cache.k), "cache_v": torch.stack(cache.v), "length": cache.length}


# -----------------------------------------------------------------------------------------------------------------
# LlamaAttention.heads, .attend and the layer they make (forward, given)


def run_heads_split_and_rope(seed):
    import model as M
    B, T = 2, 3
    attn = _layer(M, seed, 7)
    g = generator(seed, 8)
    q, k, v = (torch.randn(B, T, n * D_H, generator=g) for n in (H, H_KV, H_KV))
    cos, sin = _cos_sin(seed, 9, B, T)
    with stand_in(M, "apply_rope", _fake_rope):
        q, k, v = attn.heads(q, k, v, cos, sin)
    return {"q": q, "k": k, "v": v}


def run_causal_layer(seed):
    import model as M
    B, T = 2, 6
    attn = _layer(M, seed, 10)
    x = torch.randn(B, T, D, generator=generator(seed, 11))
    cos, sin = _cos_sin(seed, 12, B, T)
    with stand_in(M, "apply_rope", _fake_rope), torch.no_grad():
        return {"y": attn(x, cos, sin, None, None)}


def run_decode_with_cache(seed):
    import model as M
    B, T, P = 2, 6, 3  # prefill P tokens, then one token per call
    attn = _layer(M, seed, 13)
    x = torch.randn(B, T, D, generator=generator(seed, 14))
    cos, sin = _cos_sin(seed, 15, B, T)
    cache = M.KVCache(1, B, T, H_KV, D_H)
    with stand_in(M, "apply_rope", _fake_rope), torch.no_grad():
        full = attn(x, cos, sin, None, None)
        prefill = attn(x[:, :P], cos[:, :, :P], sin[:, :, :P], None, cache)
        cache.length += P
        steps = []
        for t in range(P, T):
            steps.append(attn(x[:, t:t + 1], cos[:, :, t:t + 1], sin[:, :, t:t + 1], None, cache))
            cache.length += 1
    return {"full": full, "prefill": prefill, "decode": torch.cat(steps, 1), "cache_k": cache.k[0],
            "cache_v": cache.v[0]}


def run_cache_with_left_padding(seed):
    import model as M
    B, P, N = 2, 4, 2  # a left-padded prompt of P tokens, then N decode steps
    attn = _layer(M, seed, 16)
    x = torch.randn(B, P + N, D, generator=generator(seed, 17))
    cos, sin = _cos_sin(seed, 18, B, P + N)
    padding = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])  # row 1: two left-padding tokens
    cache = M.KVCache(1, B, P + N, H_KV, D_H)
    with stand_in(M, "apply_rope", _fake_rope), torch.no_grad():
        prefill = attn(x[:, :P], cos[:, :, :P], sin[:, :, :P], M.attention_mask_4d(padding, 0, P, True), cache)
        cache.length += P
        steps = []
        for t in range(P, P + N):
            padding = torch.cat([padding, padding.new_ones(B, 1)], 1)
            mask = M.attention_mask_4d(padding, 0, 1, True)  # [B, 1, 1, t + 1]
            steps.append(attn(x[:, t:t + 1], cos[:, :, t:t + 1], sin[:, :, t:t + 1], mask, cache))
            cache.length += 1
    return {"prefill": prefill, "decode": torch.cat(steps, 1)}


STAND_IN = "apply_rope replaced by a stand-in"
CASES = [
    Case("attention_is_causal_without_mask", run_is_causal_without_mask,
         "attention(q [2, 4, 5, 8], k, v [2, 2, 5, 8], mask=None): causal, 4 query heads on 2 key/value heads",
         atol=1e-5, rtol=1e-4),
    Case("attention_decode_step_sees_the_whole_past", run_decode_step_sees_the_whole_past,
         "attention(q [2, 4, 1, 8], k, v [2, 2, 6, 8], mask=None): one query (a decode step) over 6 keys",
         atol=1e-5, rtol=1e-4),
    Case("attention_uses_the_given_boolean_mask", run_uses_the_given_boolean_mask,
         "attention(q [2, 4, 5, 8], k, v [2, 2, 5, 8], a boolean mask [2, 1, 5, 5] with left padding, True = may "
         "attend)", atol=1e-5, rtol=1e-4),
    Case("attention_gqa_head_mapping", run_gqa_head_mapping,
         "attention(q [1, 4, 3, 8], k, v [1, 2, 3, 8], mask=None) where value head j holds one constant",
         atol=1e-5, rtol=1e-4,
         hints={"y": "each query head h must read key/value head h // (H / H_kv): heads 0, 1 read 0; 2, 3 read 1"}),
    Case("kv_cache_update_appends_and_returns_everything", run_kv_cache_update,
         "KVCache.update on layer 1 of an empty 2-layer cache (3 positions), then again after length += 3 (2 more)",
         atol=0, rtol=0,
         hints={"prefill_k": "on an empty cache, update returns the keys just written",
                "next_k": "update returns all keys so far: the past ones, then the new ones",
                "cache_k": "update writes the new keys into the layer's own tensor at slots [length, length + T)",
                "length": "update must not change length (the model advances it once per forward)"}),
    Case("heads_split_and_rope", run_heads_split_and_rope,
         f"LlamaAttention.heads(q [2, 3, 32], k, v [2, 3, 16], cos, sin) ({STAND_IN})", atol=1e-6, rtol=1e-5,
         hints={"q": "[B, T, H·d_h] -> view [B, T, H, d_h] -> transpose to [B, H, T, d_h], then apply_rope(q, cos, "
                     "sin)",
                "k": "k: view [B, T, H_kv, d_h] -> [B, H_kv, T, d_h], then apply_rope(k, cos, sin)",
                "v": "v: view [B, T, H_kv, d_h] -> [B, H_kv, T, d_h], no RoPE"}),
    Case("attention_causal_closed_form", run_causal_layer,
         f"LlamaAttention(x [2, 6, 32], mask=None, no cache) with q/k/v/o biases ({STAND_IN})",
         atol=1e-5, rtol=1e-4),
    Case("attention_decode_with_cache_equals_full_attention", run_decode_with_cache,
         f"LlamaAttention without a cache, then through a KVCache: a 3-token prefill and 3 one-token steps, mask=None "
         f"({STAND_IN})", atol=1e-5, rtol=1e-4,
         hints={"prefill": "prefill through a KVCache must equal attention without one (causal over the prompt)",
                "decode": "a one-token step must store its key/value in the cache and attend over everything "
                          "cache.update returns (the whole past and itself)",
                "cache_k": "the cache must hold the keys after apply_rope, at their own positions"}),
    Case("attention_cache_with_left_padding", run_cache_with_left_padding,
         f"LlamaAttention through a KVCache with a left-padded 4-token prompt and 2 one-token steps, masks from "
         f"attention_mask_4d ({STAND_IN})", atol=1e-5, rtol=1e-4,
         hints={"decode": "a decode step must pass its mask [B, 1, 1, S] over all S cached keys to the attention"}),
]
