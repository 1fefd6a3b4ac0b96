"""Part `rope` (WALKTHROUGH.md §3): rotary position embeddings in model.py.

  rope_inv_freq   θ_i = theta^(-2i/d_h), i < d_h/2 (the base line; the Llama-3 / linear scaling after it is given)
  rope_cos_sin    positions [B, T] -> cos, sin [B, 1, T, d_h] of the angles pos·θ_i, each θ_i in both halves
  apply_rope      rotate the half-split pairs (x[i], x[i + d_h/2]) by pos·θ_i: (x1 cos − x2 sin, x2 cos + x1 sin)

Each case builds inputs from a seed, runs the student's functions and returns their outputs; the grader compares them
with the reference's (teach/expected/rope.pt). No case holds the solution."""
import torch

from grading import Case, generator


def _theta(seed, offset, lo, hi):
    """A rope_theta drawn log-uniformly in [10^lo, 10^hi] (never exactly 10000)."""
    return float(10 ** (lo + (hi - lo) * torch.rand((), generator=generator(seed, offset), dtype=torch.float64)))


def _cfg(M, d, theta, **kw):
    return M.LlamaConfig(vocab_size=64, hidden_size=4 * d, num_attention_heads=4, head_dim=d, rope_theta=theta, **kw)


def run_inv_freq_closed_form(seed):
    import model as M
    small = M.rope_inv_freq(_cfg(M, 8, _theta(seed, 1, 3, 4.5)))
    large = M.rope_inv_freq(_cfg(M, 64, _theta(seed, 2, 5, 6)))
    return {"inv_freq_d8": small, "inv_freq_d64": large}


def run_inv_freq_with_scaling(seed):
    import model as M
    theta = _theta(seed, 3, 4, 6)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    out = {}
    for kind, scaling in [("default", None), ("linear", {"rope_type": "linear", "factor": 4.0}), ("llama3", llama3)]:
        out[kind] = M.rope_inv_freq(_cfg(M, 64, theta, rope_scaling=scaling, max_position_embeddings=512))
    return out


def _inv_freq(seed, offset, d):
    """Some decreasing positive frequencies [d/2] (any will do: rope_cos_sin takes them as given)."""
    return torch.rand(d // 2, generator=generator(seed, offset)).add(0.05).sort(descending=True).values


def run_cos_sin_layout(seed):
    import model as M
    g = generator(seed, 4)
    pos = torch.randint(0, 20, (2, 5), generator=g)
    pos[1, :3] = 0  # row 1: left padding (positions clamped at 0), then its own positions
    pos[1, 3:] = torch.tensor([1, 2])
    cos, sin = M.rope_cos_sin(pos, _inv_freq(seed, 5, 8))
    return {"cos": cos, "sin": sin}


def run_cos_sin_large_positions(seed):
    import model as M
    pos = torch.randint(0, 200, (3, 7), generator=generator(seed, 6))
    inv_freq = M.rope_inv_freq(_cfg(M, 16, 10000.0))  # this part's own function: large angles, fp32
    cos, sin = M.rope_cos_sin(pos, inv_freq)
    return {"cos": cos, "sin": sin}


def _cos_sin(seed, offset, B, T, d):
    """cos, sin [B, 1, T, d] of random angles, each angle in both halves (the layout the docstring gives): apply_rope
    is taken on its own, so the angles need not come from positions."""
    angles = (torch.rand(B, 1, T, d // 2, generator=generator(seed, offset)) * 2 - 1) * 3.14
    both_halves = torch.cat([angles, angles], -1)
    return torch.cos(both_halves), torch.sin(both_halves)


def run_apply_rope_half_split_pairs(seed):
    import model as M
    x = torch.randn(2, 3, 4, 8, generator=generator(seed, 7))
    cos, sin = _cos_sin(seed, 8, 2, 4, 8)
    return {"y": M.apply_rope(x, cos, sin)}


def run_apply_rope_q_and_k_heads(seed):
    import model as M
    q = torch.randn(2, 4, 6, 16, generator=generator(seed, 9))  # 4 query heads, 2 key heads: cos/sin broadcast
    k = torch.randn(2, 2, 6, 16, generator=generator(seed, 10))
    cos, sin = _cos_sin(seed, 11, 2, 6, 16)
    return {"q": M.apply_rope(q, cos, sin), "k": M.apply_rope(k, cos, sin)}


def run_scores_relative_position(seed):
    import model as M
    d = 16
    inv_freq = M.rope_inv_freq(_cfg(M, d, _theta(seed, 12, 3, 5)))
    q = torch.randn(1, 1, 1, d, generator=generator(seed, 13)).expand(1, 1, 6, d)
    k = torch.randn(1, 1, 1, d, generator=generator(seed, 14)).expand(1, 1, 6, d)
    pos_q = torch.tensor([[3, 10, 40, 0, 7, 100]])
    pos_k = pos_q - torch.tensor([[2, 2, 2, 0, 0, 0]])  # offsets 2, 2, 2, 0, 0, 0
    cq, sq = M.rope_cos_sin(pos_q, inv_freq)
    ck, sk = M.rope_cos_sin(pos_k, inv_freq)
    scores = (M.apply_rope(q, cq, sq) * M.apply_rope(k, ck, sk)).sum(-1)[0, 0]  # [6]
    return {"scores": scores}


CASES = [
    Case("rope_inv_freq_closed_form", run_inv_freq_closed_form,
         "rope_inv_freq(cfg) for head_dim 8 and 64 and a rope_theta drawn at random", atol=0, rtol=1e-5,
         hints={"inv_freq_d64": "θ_i = rope_theta^(-2i/d_h) for i < d_h/2, from cfg.rope_theta and cfg.head_dim"}),
    Case("rope_inv_freq_with_scaling", run_inv_freq_with_scaling,
         "rope_inv_freq(cfg) for default, linear and llama3 rope_scaling (head_dim 64)", atol=0, rtol=1e-5),
    Case("rope_cos_sin_layout", run_cos_sin_layout,
         "rope_cos_sin(pos [2, 5], inv_freq [4]) with a left-padded row (cos, sin [B, 1, T, d_h])", atol=1e-5,
         rtol=1e-5),
    Case("rope_cos_sin_large_positions", run_cos_sin_large_positions,
         "rope_cos_sin(pos [3, 7] up to 200, rope_inv_freq of head_dim 16)", atol=1e-4, rtol=0),
    Case("apply_rope_rotates_half_split_pairs", run_apply_rope_half_split_pairs,
         "apply_rope(x [2, 3, 4, 8], cos, sin [2, 1, 4, 8])", atol=1e-5, rtol=1e-5),
    Case("apply_rope_q_and_k_heads", run_apply_rope_q_and_k_heads,
         "apply_rope on q [2, 4, 6, 16] and k [2, 2, 6, 16] with the same cos, sin [2, 1, 6, 16] (broadcast over "
         "heads)", atol=1e-5, rtol=1e-5),
    Case("rope_scores_depend_on_relative_position_only", run_scores_relative_position,
         "q·k after rope_inv_freq, rope_cos_sin and apply_rope at position pairs with offsets 2, 2, 2, 0, 0, 0",
         atol=1e-4, rtol=1e-4,
         hints={"scores": "after RoPE, q·k must depend only on the offset m − n of the two positions, and equal the "
                          "plain q·k at offset 0"}),
]
