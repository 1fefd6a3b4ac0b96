"""Part `rope` (WALKTHROUGH.md §3): rotary position embeddings in model.py.

  rope_inv_freq   θ_i = theta^(-2i/d_h), i < d_h/2 (the base line; the Llama-3 / linear scaling after it is given)
  rope_cos_sin    positions [B, T] -> cos, sin [B, 1, T, d_h] of the angles pos·θ_i, each θ_i in both halves
  apply_rope      rotate the half-split pairs (x[i], x[i + d_h/2]) by pos·θ_i: (x1 cos − x2 sin, x2 cos + x1 sin)

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import torch

import model as M


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _closed_form_inv_freq(theta, d):
    """θ_i = theta^(-2i/d), i < d/2, in fp64."""
    return torch.tensor([theta ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)


def _angles(pos, inv_freq):
    """pos [B, T], θ [d/2] -> angles [B, 1, T, d/2] in fp64."""
    return (pos.double()[..., None] * inv_freq.double())[:, None]


def _rotate_half_split(x, ang):
    """The closed form: pair i is (x[i], x[i + d/2]), rotated by ang[..., i]; fp64."""
    x = x.double()
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    c, s = ang.cos(), ang.sin()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def _rotate_interleaved(x, ang):
    """The other convention (Meta's original / llama2.c): pair i is (x[2i], x[2i+1])."""
    x = x.double()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = ang.cos(), ang.sin()
    return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], -1).flatten(-2)


def _cos_sin(ang):
    """Half-split cos/sin [B, 1, T, d] (each angle in both halves), fp32, independent of the student's rope_cos_sin."""
    full = torch.cat([ang, ang], -1)
    return full.cos().float(), full.sin().float()


def test_rope_inv_freq_closed_form():
    for theta, d in [(10000.0, 8), (500000.0, 64)]:
        cfg = M.LlamaConfig(vocab_size=64, hidden_size=4 * d, num_attention_heads=4, head_dim=d, rope_theta=theta)
        got = M.rope_inv_freq(cfg)
        assert got.shape == (d // 2,), \
            f"rope_inv_freq must return d_h/2 = {d // 2} frequencies (one per rotated pair), got {tuple(got.shape)}"
        want = _closed_form_inv_freq(theta, d)
        if torch.allclose(got.double(), 1 / want, rtol=1e-4):
            raise AssertionError("rotary frequencies must be theta^(-2i/d_h): the exponent is negative "
                                 "(θ_i = 1 / theta^(2i/d_h)), so θ_0 = 1 and they decrease")
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=0), \
            f"rotary frequencies must be θ_i = theta^(-2i/d_h) for i < d_h/2 (theta={theta:g}, d_h={d}): " \
            f"got {got[:4].tolist()} ..., want {want[:4].tolist()} ..."


def test_rope_inv_freq_matches_transformers_with_scaling():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    for scaling in [None, {"rope_type": "linear", "factor": 4.0}, llama3]:
        ours = M.LlamaConfig(vocab_size=64, hidden_size=256, num_attention_heads=4, head_dim=64,
                             rope_theta=500000.0, rope_scaling=scaling, max_position_embeddings=512)
        theirs = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, max_position_embeddings=512,
                             rope_parameters={"rope_type": "default", "rope_theta": 500000.0, **(scaling or {})})
        got, want = M.rope_inv_freq(ours), LlamaRotaryEmbedding(theirs).inv_freq
        assert got.shape == want.shape, f"rope_inv_freq must return d_h/2 frequencies, got {tuple(got.shape)}"
        kind = (scaling or {}).get("rope_type", "default")
        assert torch.allclose(got, want.float(), rtol=1e-5, atol=0), \
            f"rope_inv_freq ({kind} RoPE, theta=500000) differs from transformers' LlamaRotaryEmbedding: the base " \
            "frequencies θ_i = theta^(-2i/d_h) must use cfg.rope_theta and cfg.head_dim"


def test_rope_cos_sin_layout():
    B, T, d = 2, 5, 8
    inv_freq = _closed_form_inv_freq(10000.0, d).float()
    pos = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])  # row 1: left padding (positions clamped at 0)
    cos, sin = M.rope_cos_sin(pos, inv_freq)
    assert cos.shape == sin.shape == (B, 1, T, d), \
        f"rope_cos_sin must return cos, sin of shape [B, 1, T, d_h] = {(B, 1, T, d)}, got {tuple(cos.shape)}"
    ang = _angles(pos, inv_freq)  # [B, 1, T, d/2]
    if torch.allclose(cos.double(), ang.repeat_interleave(2, -1).cos(), atol=1e-5):
        raise AssertionError("cos/sin must hold each θ_i in both halves (cat([freqs, freqs], -1), the half-split "
                             "convention), not repeated side by side (θ_0, θ_0, θ_1, θ_1, ...)")
    want_cos, want_sin = _cos_sin(ang)
    assert torch.allclose(cos, want_cos, atol=1e-5) and torch.allclose(sin, want_sin, atol=1e-5), \
        "cos/sin must be cos(pos·θ_i), sin(pos·θ_i) of each row's own positions, each θ_i in both halves " \
        "(cat([freqs, freqs], -1))"


def test_rope_cos_sin_matches_transformers():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    rot = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16,
                                           max_position_embeddings=256, rope_theta=10000.0))
    pos = torch.randint(0, 200, (3, 7), generator=_gen(1))  # large positions: fp32 angles as transformers has them
    want_cos, want_sin = rot(torch.zeros(1, dtype=torch.float32), pos)  # [B, T, d_h]
    cos, sin = M.rope_cos_sin(pos, rot.inv_freq.clone())
    assert cos.shape == (3, 1, 7, 16), f"rope_cos_sin must return [B, 1, T, d_h], got {tuple(cos.shape)}"
    err = max(float((cos[:, 0] - want_cos).abs().max()), float((sin[:, 0] - want_sin).abs().max()))
    assert err < 1e-5, f"rope_cos_sin differs from transformers' LlamaRotaryEmbedding by {err:.2e}: the angles " \
                       "must be pos·θ_i computed in fp32, each θ_i in both halves"


def test_apply_rope_rotates_half_split_pairs():
    B, H, T, d = 2, 3, 4, 8
    x = torch.randn(B, H, T, d, generator=_gen(2))
    pos = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 9]])
    ang = _angles(pos, _closed_form_inv_freq(10000.0, d))  # [B, 1, T, d/2]
    cos, sin = _cos_sin(ang)
    y = M.apply_rope(x, cos, sin)
    assert y.shape == x.shape, f"apply_rope must keep the shape {tuple(x.shape)}, got {tuple(y.shape)}"
    y = y.double()
    if torch.allclose(y, _rotate_interleaved(x, ang), atol=1e-5):
        raise AssertionError("RoPE pairs must be half-split (x[i], x[i + d/2]) as in Hugging Face checkpoints, "
                             "not interleaved (x[2i], x[2i+1])")
    if torch.allclose(y, _rotate_half_split(x, -ang), atol=1e-5):
        raise AssertionError("RoPE rotates the wrong way: (x1, x2) -> (x1 cos − x2 sin, x2 cos + x1 sin), "
                             "i.e. rotate_half(x) = cat(-x2, x1)")
    err = float((y - _rotate_half_split(x, ang)).abs().max())
    assert err < 1e-5, f"RoPE pairs must be half-split (x[i], x[i + d/2]), each rotated by pos·θ_i: " \
                       f"(x1 cos − x2 sin, x2 cos + x1 sin); off by {err:.2e}"
    x_norm = x.double().view(B, H, T, 2, d // 2).pow(2).sum(-2)
    y_norm = y.view(B, H, T, 2, d // 2).pow(2).sum(-2)
    assert torch.allclose(x_norm, y_norm, atol=1e-5), \
        "RoPE must be a rotation of each pair (x[i], x[i + d/2]): it keeps x[i]² + x[i + d/2]²"


def test_apply_rope_matches_transformers_for_q_and_k():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    B, T, d = 2, 6, 16
    q = torch.randn(B, 4, T, d, generator=_gen(3))  # 4 query heads, 2 key heads: cos/sin broadcast over heads
    k = torch.randn(B, 2, T, d, generator=_gen(4))
    pos = torch.randint(0, 50, (B, T), generator=_gen(5))
    cos, sin = _cos_sin(_angles(pos, _closed_form_inv_freq(10000.0, d)))
    want_q, want_k = apply_rotary_pos_emb(q, k, cos[:, 0], sin[:, 0])  # transformers unsqueezes the head axis
    got_q, got_k = M.apply_rope(q, cos, sin), M.apply_rope(k, cos, sin)
    err = max(float((got_q - want_q).abs().max()), float((got_k - want_k).abs().max()))
    assert err < 1e-5, f"apply_rope differs from transformers' apply_rotary_pos_emb by {err:.2e}: RoPE pairs must " \
                       "be half-split (x[i], x[i + d/2]), x * cos + rotate_half(x) * sin, for every head"


def test_rope_scores_depend_on_relative_position_only():
    d = 16
    cfg = M.LlamaConfig(vocab_size=64, hidden_size=64, num_attention_heads=4, head_dim=d)
    inv_freq = M.rope_inv_freq(cfg)
    q = torch.randn(1, 1, 1, d, generator=_gen(6)).expand(1, 1, 6, d)
    k = torch.randn(1, 1, 1, d, generator=_gen(7)).expand(1, 1, 6, d)
    pos_q = torch.tensor([[3, 10, 40, 0, 7, 100]])
    pos_k = pos_q - torch.tensor([[2, 2, 2, 0, 0, 0]])  # offsets 2, 2, 2, 0, 0, 0
    cq, sq = M.rope_cos_sin(pos_q, inv_freq)
    ck, sk = M.rope_cos_sin(pos_k, inv_freq)
    scores = (M.apply_rope(q, cq, sq) * M.apply_rope(k, ck, sk)).sum(-1)[0, 0].double()  # [6]
    same = scores[:3] - scores[0], scores[3:] - scores[3]
    assert all(float(s.abs().max()) < 1e-3 for s in same), \
        f"after RoPE, q·k must depend only on the offset m − n of the two positions (a rotation by pos·θ_i): " \
        f"scores at offset 2: {scores[:3].tolist()}, at offset 0: {scores[3:].tolist()}"
    plain = float((q[0, 0, 0] * k[0, 0, 0]).sum())
    assert abs(float(scores[3]) - plain) < 1e-4, \
        "at equal positions RoPE must leave q·k unchanged (both rotated by the same angle)"
    assert abs(float(scores[0]) - plain) > 1e-3, "RoPE must change q·k when the positions differ"
