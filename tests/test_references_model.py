"""model.py's RoPE and attention pieces, one by one, against transformers' own (instructor side: the assignment's part
cases in teach/parts compare with stored reference outputs instead, so students need not install transformers).

tests/test_model.py compares whole models (logits, rope scaling, generation); these localise a difference to
rope_inv_freq, rope_cos_sin, apply_rope or LlamaAttention."""
import pytest
import torch

import model as M

transformers = pytest.importorskip("transformers", reason="transformers (the reference implementation) not installed")
from transformers import LlamaConfig  # noqa: E402
from transformers.models.llama import modeling_llama as hf  # noqa: E402


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _cos_sin(B, T, d, start=0):
    """Half-split cos/sin [B, 1, T, d] of positions start .. start + T - 1, theta 10000 (transformers' layout)."""
    rot = hf.LlamaRotaryEmbedding(LlamaConfig(hidden_size=4 * d, num_attention_heads=4, head_dim=d,
                                              max_position_embeddings=256, rope_theta=10000.0))
    pos = torch.arange(start, start + T)[None].expand(B, T)
    cos, sin = rot(torch.zeros(1, dtype=torch.float32), pos)  # [B, T, d]
    return cos[:, None], sin[:, None]


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0}, LLAMA3],
                         ids=["default", "linear", "llama3"])
def test_rope_inv_freq_matches_transformers(scaling):
    ours = M.LlamaConfig(vocab_size=64, hidden_size=256, num_attention_heads=4, head_dim=64, rope_theta=500000.0,
                         rope_scaling=scaling, max_position_embeddings=512)
    theirs = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0, **(scaling or {})})
    got, want = M.rope_inv_freq(ours), hf.LlamaRotaryEmbedding(theirs).inv_freq
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=0)


def test_rope_cos_sin_matches_transformers():
    rot = hf.LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16,
                                              max_position_embeddings=256, rope_theta=10000.0))
    pos = torch.randint(0, 200, (3, 7), generator=_gen(1))  # large positions: fp32 angles as transformers has them
    want_cos, want_sin = rot(torch.zeros(1, dtype=torch.float32), pos)  # [B, T, d_h]
    cos, sin = M.rope_cos_sin(pos, rot.inv_freq.clone())
    assert cos.shape == sin.shape == (3, 1, 7, 16)
    torch.testing.assert_close(cos[:, 0], want_cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(sin[:, 0], want_sin, atol=1e-5, rtol=0)


def test_apply_rope_matches_transformers_for_q_and_k():
    B, T, d = 2, 6, 16
    q = torch.randn(B, 4, T, d, generator=_gen(3))  # 4 query heads, 2 key heads: cos/sin broadcast over heads
    k = torch.randn(B, 2, T, d, generator=_gen(4))
    cos, sin = _cos_sin(B, T, d, start=5)
    want_q, want_k = hf.apply_rotary_pos_emb(q, k, cos[:, 0], sin[:, 0])  # transformers unsqueezes the head axis
    torch.testing.assert_close(M.apply_rope(q, cos, sin), want_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(M.apply_rope(k, cos, sin), want_k, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padded", [False, True], ids=["causal", "left_padded"])
def test_attention_layer_matches_transformers(padded):
    H, H_KV, D_H, D = 4, 2, 8, 32
    cfg = LlamaConfig(hidden_size=D, num_attention_heads=H, num_key_value_heads=H_KV, head_dim=D_H,
                      attention_bias=True)
    cfg._attn_implementation = "eager"  # the plain matmul-softmax-matmul reference
    ours = M.LlamaAttention(M.LlamaConfig(vocab_size=64, hidden_size=D, num_attention_heads=H,
                                          num_key_value_heads=H_KV, head_dim=D_H, attention_bias=True), 0)
    g = _gen(9)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.ndim > 1 else 0.2))
    theirs = hf.LlamaAttention(cfg, 0).eval()
    theirs.load_state_dict(ours.state_dict())
    B, T = 2, 7
    x = torch.randn(B, T, D, generator=_gen(10))
    cos, sin = _cos_sin(B, T, D_H, start=3)
    if padded:
        mask = M.attention_mask_4d(torch.tensor([[1] * T, [0, 0] + [1] * (T - 2)]), 0, T, causal=True)
    else:
        mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, 1, T, T)
    additive = torch.zeros(B, 1, T, T).masked_fill(~mask, float("-inf"))
    with torch.no_grad():
        want, _ = theirs(x, position_embeddings=(cos[:, 0], sin[:, 0]), attention_mask=additive)
        got = ours.eval()(x, cos, sin, mask if padded else None, None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
