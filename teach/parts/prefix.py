"""Part `prefix` (WALKTHROUGH.md §10): prefix-tuning's two regions.

- reft.PrefixTuning.extra_kv (seam 3): k, v [B, H_kv, T, d_h] -> [B, H_kv, P + T, d_h], layer l's P learned keys and
  values (self.layer_kv(l)) first on the key axis, the same for every row, in k's and v's dtype;
- model.Llama.positions_and_mask: with P virtual tokens first, real tokens' RoPE positions start at P, at prefill and
  at decode steps.

Each case builds inputs from a seed, runs the student's code and returns its outputs; the grader compares them with
the reference's (teach/expected/prefix.pt). No case holds the solution, and none runs the model's forward:
positions_and_mask is called on a small stand-in object that carries only the model's `config`."""
import torch

from grading import Case, generator, guarded


def _prefix(R, seed, L=3, H=2, d=8, P=3):
    """A PrefixTuning whose keys and values are O(1) random numbers from the seed."""
    method = R.PrefixTuning(L, H, d, P)
    with torch.no_grad():
        method.prefix.copy_(torch.randn(method.prefix.shape, generator=generator(seed, 99)))
    return method


def _grad(p):
    return torch.zeros_like(p) if p.grad is None else p.grad


def run_extra_kv(seed):
    import reft as R
    method = _prefix(R, seed)
    B, H, T, d = 4, 2, 5, 8
    k = torch.randn(B, H, T, d, generator=generator(seed, 1))
    v = torch.randn(B, H, T, d, generator=generator(seed, 2))
    wk = torch.randn(B, H, 3 + T, d, generator=generator(seed, 3))  # weights of a loss over every layer's output
    wv = torch.randn(B, H, 3 + T, d, generator=generator(seed, 4))

    def body():
        keys, values, loss = [], [], 0
        for layer in range(3):
            kk, vv = method.extra_kv(layer, k, v)
            keys.append(kk)
            values.append(vv)
            loss = loss + (layer + 1) * ((kk * wk).sum() + 2 * (vv * wv).sum())
        if loss.requires_grad:
            loss.backward()
        return {"keys": keys, "values": values, "prefix_grad": _grad(method.prefix)}
    return guarded(["keys", "values", "prefix_grad"], body)


def run_dtype(seed):
    import reft as R
    method = _prefix(R, seed)
    k = torch.randn(2, 2, 4, 8, generator=generator(seed, 5)).bfloat16()
    v = torch.randn(2, 2, 4, 8, generator=generator(seed, 6)).bfloat16()
    return guarded(["keys", "values"], lambda: dict(zip(["keys", "values"], method.extra_kv(1, k, v))))


def run_reparametrization(seed):
    import reft as R
    method = R.PrefixTuning(2, 2, 8, 3, projection=True, hidden=16)  # no `prefix` tensor: an MLP makes it
    with torch.no_grad():
        for i, p in enumerate(method.parameters()):
            p.copy_(0.5 * torch.randn(p.shape, generator=generator(seed, 10 + i)))
    k = torch.randn(3, 2, 4, 8, generator=generator(seed, 7))
    v = torch.randn(3, 2, 4, 8, generator=generator(seed, 8))

    def body():
        keys, values, loss = [], [], 0
        for layer in range(2):
            kk, vv = method.extra_kv(layer, k, v)
            keys.append(kk)
            values.append(vv)
            loss = loss + (layer + 1) * (kk.sum() + 3 * vv.pow(2).sum())
        if loss.requires_grad:
            loss.backward()
        return {"keys": keys, "values": values, "grads": {n: _grad(p) for n, p in method.named_parameters()}}
    return guarded(["keys", "values", "grads"], body)


class _Config:
    max_position_embeddings = 64


class _Shell:
    """What positions_and_mask reads of a Llama: its config (no weights, no RoPE tables)."""
    config = _Config()


class _Cache:
    """What positions_and_mask reads of a KVCache: the filled slots."""

    def __init__(self):
        self.length = 0


def _positions(M, ids, mask, cache, P):
    return M.Llama.positions_and_mask(_Shell(), ids, mask, cache, P)


def _left_padded(seed, B, T, offset):
    """[B, T] attention mask: each row left-padded by 0 .. T - 2 tokens drawn from the seed."""
    pad = torch.randint(0, T - 1, (B,), generator=generator(seed, offset))
    return (torch.arange(T)[None] >= pad[:, None]).long()


def run_prefill(seed):
    import model as M
    P = int(torch.randint(2, 6, (1,), generator=generator(seed, 20)))
    B, T = 3, 6
    ids = torch.zeros(B, T, dtype=torch.long)
    mask = _left_padded(seed, B, T, 21)

    def body():
        return {"padded": _positions(M, ids, mask, None, P)[0],
                "no_attention_mask": _positions(M, ids, None, None, P)[0]}
    return guarded(["padded", "no_attention_mask"], body)


def _prefill_then_decode(M, B, T, P, mask, steps):
    """RoPE positions at the prefill and at each one-token decode step, the cache advanced as the model does."""
    cache = _Cache()
    pos, _, added = _positions(M, torch.zeros(B, T, dtype=torch.long), mask, cache, P)
    cache.length += added
    decode = []
    for _ in range(steps):
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # the new token is real
        step, _, added = _positions(M, torch.zeros(B, 1, dtype=torch.long), mask, cache, P)
        cache.length += added
        decode.append(step)
    return pos, torch.cat(decode, 1)


def run_decode(seed):
    import model as M
    P = int(torch.randint(2, 6, (1,), generator=generator(seed, 30)))
    B, T = 2, 5
    mask = _left_padded(seed, B, T, 31)
    names = ["prefill_padded", "decode_padded", "prefill_no_attention_mask", "decode_no_attention_mask"]

    def body():
        return dict(zip(names, [*_prefill_then_decode(M, B, T, P, mask, 4),
                                *_prefill_then_decode(M, B, T, P, None, 4)]))
    return guarded(names, body)


CASES = [
    Case("extra_kv_puts_the_layers_keys_and_values_first_for_every_row", run_extra_kv,
         "extra_kv(l, k, v) for layers 0-2, k and v [4, 2, 5, 8], P = 3 (and the prefix's gradient)", atol=1e-6,
         rtol=1e-6,
         hints={"prefix_grad": "extra_kv must keep the graph to the prefix parameter (no detach, no torch.tensor "
                               "copy): layer l's gradient reaches prefix[l] only, once per row"}),
    Case("extra_kv_returns_the_dtype_of_k_and_v", run_dtype,
         "extra_kv(1, k, v) for bf16 k and v [2, 2, 4, 8] (the prefix is fp32)", atol=0, rtol=0),
    Case("extra_kv_uses_layer_kv_with_the_reparametrization", run_reparametrization,
         "extra_kv(l, k, v) with projection=True (the MLP reparametrization), and the gradients of its parameters",
         atol=1e-5, rtol=1e-5,
         hints={"grads": "with projection=True the gradient must flow through extra_kv into the MLP and its "
                         "embedding (read the keys/values through self.layer_kv(layer))"}),
    Case("real_tokens_rope_positions_start_at_P", run_prefill,
         "positions_and_mask's RoPE positions at prefill with P virtual tokens (left-padded, and with no attention "
         "mask)",
         hints={"no_attention_mask": "without an attention mask the positions are an expanded view: add the offset "
                                     "out of place (rope_pos = rope_pos + P)"}),
    Case("decode_steps_keep_counting_after_the_prefix", run_decode,
         "positions_and_mask's RoPE positions at a prefill with P virtual tokens, then at 4 one-token decode steps",
         hints={"decode_padded": "decode steps' RoPE positions must also start after the prefix",
                "decode_no_attention_mask": "decode steps' RoPE positions must also start after the prefix"}),
]
