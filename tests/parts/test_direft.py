"""Part `direft` (WALKTHROUGH.md §9): reft.DiReFT.forward, ReFT paper eq. (3): Φ(h) = h + W₂ᵀ(W₁ h + b), in row
form h + act(h W₁ᵀ + b) W₂ with W₂ [r, d] used as it is (no orthogonality, no −R h term), dropout on the whole
output, computed in fp32 and returned in h's dtype.

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import torch

import reft

D, RANK = 16, 4


def _module(seed=0, act_fn="linear", dropout=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    m = reft.DiReFT(D, RANK, dropout=dropout, act_fn=act_fn).to(dtype)
    with torch.no_grad():
        m.W1.weight.copy_(torch.randn(RANK, D, generator=g, dtype=torch.float64))
        m.W1.bias.copy_(torch.randn(RANK, generator=g, dtype=torch.float64))
        m.W2.copy_(torch.randn(RANK, D, generator=g, dtype=torch.float64) + 0.3)  # rows neither unit nor orthogonal
    return m.eval()


def _import_pyreft():
    """pyreft, imported with its stdout muted (pyvene prints a notice on import; the grader's worker reads stdout)."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        import pyreft
    return pyreft


def _h(seed=1, dtype=torch.float64):
    return torch.randn(2, 3, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _closed_form(m, h, act=lambda x: x):
    """eq. (3) in row form, fp64: h + act(h W₁ᵀ + b) W₂."""
    W1, b, W2 = (t.detach().double() for t in (m.W1.weight, m.W1.bias, m.W2))
    return h.double() + act(h.double() @ W1.T + b) @ W2


def test_direft_closed_form():
    m = _module(dtype=torch.float64)
    h = _h()
    with torch.no_grad():
        out = m(h)
    assert out.shape == h.shape, f"DiReFT must keep the shape {tuple(h.shape)}, got {tuple(out.shape)}"
    W1, b, W2 = m.W1.weight, m.W1.bias, m.W2
    with torch.no_grad():
        if torch.allclose(out, h + (h @ W1.T) @ W2, atol=1e-8):
            raise AssertionError("DiReFT must add the bias b of W₁: Φ(h) = h + (W₁ h + b) W₂, the bias is missing")
        if torch.allclose(out, h + (h @ W1.T + b - h @ W2.T) @ W2, atol=1e-8):
            raise AssertionError("DiReFT has no orthogonal projection or -R h term: Φ(h) = h + W₂ᵀ(W₁ h + b) "
                                 "(that is LoReFT's form)")
    err = float((out - _closed_form(m, h)).abs().max())
    assert err < 1e-8, f"DiReFT differs from h + W₂ᵀ(W₁ h + b) (row form h + (h W₁ᵀ + b) W₂) by {err:.2e}"


def test_direft_has_no_projection_or_minus_Rh_term():
    m = _module(seed=2, dtype=torch.float64)
    h = _h(seed=3)
    with torch.no_grad():
        m.W1.bias.copy_(-(h[0, 0] @ m.W1.weight.T))  # W₁ h + b = 0 at h[0, 0]
        out = m(h)
        no_bias = h[0, 0] + (h[0, 0] @ m.W1.weight.T) @ m.W2
    if torch.allclose(out[0, 0], no_bias, atol=1e-8):
        raise AssertionError("DiReFT must add the bias b of W₁: where W₁ h + b = 0, Φ(h) must equal h")
    err = float((out[0, 0] - h[0, 0]).abs().max())
    assert err < 1e-10, f"where W₁ h + b = 0, Φ(h) must equal h (it moved by {err:.2e}): the edit is W₂ᵀ(W₁ h + b) " \
                        "and nothing else (DiReFT has no orthogonal projection or -R h term)"
    with torch.no_grad():
        m.W2.mul_(3.0)
        out3 = m(h)
    err = float(((out3 - h) - 3 * (out - h)).abs().max())
    assert err < 1e-8, "W₂ must be used as it is (no orthogonalisation or normalisation): scaling W₂ by 3 must " \
                       f"scale the edit Φ(h) − h by 3 (off by {err:.2e})"


def test_direft_bias_and_projection_direction():
    m = _module(seed=4, dtype=torch.float64)
    h = _h(seed=5)
    with torch.no_grad():
        m.W1.weight.zero_()  # then Φ(h) = h + b W₂ for every h
        out = m(h)
    want = h + m.W1.bias.detach() @ m.W2.detach()
    err = float((out - want).abs().max())
    assert err < 1e-10, f"DiReFT must add the bias b and project back with W₂ [r, d] (W₂ᵀ in column form): with " \
                        f"W₁ = 0, Φ(h) must be h + b W₂ (off by {err:.2e})"


def test_direft_matches_pyreft():
    pyreft = _import_pyreft()
    m = _module(seed=6)
    W1, b, W2 = m.W1.weight.detach().clone(), m.W1.bias.detach().clone(), m.W2.detach().clone()
    h = _h(seed=7, dtype=torch.float32)
    iv = pyreft.NodireftIntervention(embed_dim=D, low_rank_dimension=RANK, add_bias=False, dtype=torch.float32)
    iv.load_state_dict({"learned_source.weight": W1, "learned_source.bias": b, "proj_layer.weight": W2},
                       strict=False)
    iv.eval()
    with torch.no_grad():
        ours, theirs = m(h), iv(h)
    assert ours.dtype == torch.float32, f"DiReFT of an fp32 input must return fp32, got {ours.dtype}"
    err = float((ours - theirs).abs().max())
    assert err < 1e-5, f"DiReFT differs from pyreft's NodireftIntervention (the paper's DiReFT) with the same " \
                       f"W₁, b, W₂ by {err:.2e}"


def test_direft_activation_and_dropout():
    m = _module(seed=8, act_fn="relu", dtype=torch.float64)
    h = _h(seed=9)
    with torch.no_grad():
        out = m(h)
    err = float((out - _closed_form(m, h, torch.relu)).abs().max())
    assert err < 1e-8, f"with act_fn='relu', Φ(h) must be h + relu(h W₁ᵀ + b) W₂: the activation applies to " \
                       f"W₁ h + b (off by {err:.2e})"
    m = _module(seed=8, dropout=0.5, dtype=torch.float64)
    with torch.no_grad():
        full = m(h)
        m.train()
        torch.manual_seed(0)
        dropped = m(h)
    assert not torch.allclose(dropped, full), "in train mode DiReFT must apply its dropout (nn.Dropout(dropout))"
    zero = dropped == 0
    assert 0 < int(zero.sum()) < zero.numel() and torch.allclose(dropped[~zero], 2 * full[~zero], atol=1e-10), \
        "dropout acts on the whole output h + Δ (kept entries are 2·Φ(h) at p = 0.5), not on Δ alone"


def test_direft_computes_in_fp32_and_returns_the_input_dtype():
    m = _module(seed=10)  # fp32 parameters
    h = (3 * _h(seed=11, dtype=torch.float32)).bfloat16()
    out = m(h)
    assert out.dtype == torch.bfloat16, f"DiReFT of a bf16 input must return bf16, got {out.dtype}"
    with torch.no_grad():
        want = m(h.float()).bfloat16()
    assert torch.equal(out.detach(), want), "DiReFT must compute in fp32 (the method's dtype) and cast the result " \
                                            "to h's dtype once at the end"
    out.float().pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"DiReFT's {name} gets no gradient"
