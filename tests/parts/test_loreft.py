"""Part `loreft` (WALKTHROUGH.md §8): reft.LoReFT.R, the sign-fixed Q factor of the free matrix A (R = qr(A).Qᵀ,
orthonormal rows), and LoReFT.forward, ReFT paper eq. (2): Φ(h) = h + Rᵀ(W h + b − R h), the activation on W h + b,
dropout on the whole output, computed in fp32 and returned in h's dtype.

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import torch

import reft

D, RANK = 16, 4


def _gram_schmidt(A):
    """The Q factor of A [d, r] by classical Gram-Schmidt in fp64: orthonormal columns, and the triangular factor
    has a positive diagonal (the unique QR), so it needs no sign fix."""
    A = A.double()
    cols = []
    for j in range(A.shape[1]):
        v = A[:, j].clone()
        for q in cols:
            v = v - (q @ A[:, j]) * q
        cols.append(v / v.norm())
    return torch.stack(cols, 1)  # [d, r]


def _module(seed=0, orthonormal_A=True, act_fn="linear", dropout=0.0, dtype=torch.float32):
    """A LoReFT with set weights. orthonormal_A: A is already the sign-fixed Q factor (so R = Aᵀ)."""
    g = torch.Generator().manual_seed(seed)
    A = 2 * torch.randn(D, RANK, generator=g, dtype=torch.float64) + 0.5
    if orthonormal_A:
        A = _gram_schmidt(A)
    m = reft.LoReFT(D, RANK, dropout=dropout, act_fn=act_fn).to(dtype)
    with torch.no_grad():
        m.A.copy_(A)
        m.W.weight.copy_(torch.randn(RANK, D, generator=g, dtype=torch.float64))
        m.W.bias.copy_(torch.randn(RANK, generator=g, dtype=torch.float64))
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


def _R(m):
    R = m.R
    assert tuple(R.shape) == (RANK, D), f"R must be [r, d] = {(RANK, D)} (qr(A).Q is [d, r]: transpose it), " \
                                        f"got {tuple(R.shape)}"
    err = float((R.detach().double() @ R.detach().double().T - torch.eye(RANK, dtype=torch.float64)).abs().max())
    assert err < 1e-5, f"R's rows are not orthonormal (max |R Rᵀ − I| = {err:.2e}): R is the Q factor of qr(A), " \
                       "not A itself"
    return R


def test_loreft_R_has_orthonormal_rows():
    m = _module(orthonormal_A=False)  # a free A: not orthonormal, columns of different lengths
    R = _R(m).detach().double()
    A = m.A.detach().double()
    resid = float((A - R.T @ (R @ A)).abs().max())
    assert resid < 1e-5, f"R's rows must span the columns of A (R = qr(A).Qᵀ): A has a part of size {resid:.2e} " \
                         "outside them"


def test_loreft_R_is_the_sign_fixed_q_factor():
    for orthonormal_A in (False, True):
        m = _module(seed=2, orthonormal_A=orthonormal_A, dtype=torch.float64)
        R = _R(m)
        want = _gram_schmidt(m.A.detach()).T
        err = float((R.detach() - want).abs().max())
        flipped = float((R.detach().abs() - want.abs()).abs().max())
        assert not (err > 1e-6 and flipped < 1e-6), \
            "R must be qr(A).Qᵀ with the signs fixed (multiply Q's columns by sign(diag(qr(A).R))): some rows of R " \
            "have the wrong sign" + (", so an orthonormal A does not give R = Aᵀ" if orthonormal_A else "")
        assert err < 1e-6, f"R differs from the Q factor of qr(A), transposed, by {err:.2e}"
    m = _module(seed=3, orthonormal_A=False)
    R = _R(m)
    assert R.requires_grad, "R must be differentiable in A (compute it from self.A with torch ops, no detach or " \
                            "no_grad): training moves A"
    (R * torch.arange(1.0, D + 1)).sum().backward()
    assert m.A.grad is not None and float(m.A.grad.abs().sum()) > 0, "R must be differentiable in A: A gets no gradient"


def test_loreft_replaces_the_subspace_coordinates():
    m = _module(dtype=torch.float64)
    h = _h()
    with torch.no_grad():
        out, R = m(h), _R(m)
    assert out.shape == h.shape, f"LoReFT must keep the shape {tuple(h.shape)}, got {tuple(out.shape)}"
    want = h @ m.W.weight.detach().T + m.W.bias.detach()  # W h + b, [..., r]
    if torch.allclose(out @ R.T, h @ R.T + want, atol=1e-8):
        raise AssertionError("LoReFT must subtract R h: R·Φ(h) must equal W h + b, and it equals R h + W h + b")
    err = float((out @ R.T - want).abs().max())
    assert err < 1e-8, f"LoReFT must subtract R h: R·Φ(h) must equal W h + b (max error {err:.2e})"


def test_loreft_changes_nothing_outside_the_subspace():
    m = _module(seed=4, dtype=torch.float64)
    h = _h(seed=5)
    with torch.no_grad():
        out, R = m(h), _R(m)
    outside = (out - h) - (out - h) @ R.T @ R  # (I − RᵀR)(Φ(h) − h)
    err = float(outside.abs().max())
    assert err < 1e-8, f"nothing may change outside the subspace: (I − RᵀR)(Φ(h) − h) is {err:.2e}, not 0 " \
                       "(the edit must be Rᵀ(...), in R's row space)"
    assert float((out - h).abs().max()) > 1e-2, "LoReFT must change h inside the subspace (Φ is not the identity)"


def test_loreft_matches_pyreft():
    pyreft = _import_pyreft()
    m = _module(seed=6)
    U, W, b = m.A.detach().clone(), m.W.weight.detach().clone(), m.W.bias.detach().clone()  # A is orthonormal: R = Uᵀ
    h = _h(seed=7, dtype=torch.float32)
    with torch.no_grad():
        ours = m(h)
        hd, Ud = h.double(), U.double()
        closed = hd + (hd @ W.double().T + b.double() - hd @ Ud) @ Ud.T  # eq. (2), row form, fp64
        err = float((ours.double() - closed).abs().max())
        assert err < 1e-5, f"LoReFT differs from h + Rᵀ(W h + b − R h) by {err:.2e}"
        iv = pyreft.LoreftIntervention(embed_dim=D, low_rank_dimension=RANK, dtype=torch.float32)
        iv.load_state_dict({"weight": W, "bias": b, "rotate_layer": U})
        iv.eval()
        theirs = iv(h)
    err = float((ours - theirs).abs().max())
    assert err < 1e-5, f"LoReFT differs from pyreft's LoreftIntervention with the same R, W, b by {err:.2e}"
    assert ours.dtype == torch.float32


def test_loreft_activation_and_dropout():
    m = _module(seed=8, act_fn="relu", dtype=torch.float64)
    h = _h(seed=9)
    with torch.no_grad():
        out, R = m(h), _R(m)
    want = torch.relu(h @ m.W.weight.detach().T + m.W.bias.detach())
    err = float((out @ R.T - want).abs().max())
    assert err < 1e-8, f"with act_fn='relu', R·Φ(h) must equal relu(W h + b): the activation applies to W h + b " \
                       f"only (error {err:.2e})"
    m = _module(seed=8, dropout=0.5, dtype=torch.float64)
    with torch.no_grad():
        m.eval()
        full = m(h)
        m.train()
        torch.manual_seed(0)
        dropped = m(h)
    assert not torch.allclose(dropped, full), "in train mode LoReFT must apply its dropout (nn.Dropout(dropout))"
    zero = dropped == 0
    assert 0 < int(zero.sum()) < zero.numel(), \
        "dropout acts on the whole output h + Δ (about half the entries are 0 at p = 0.5), not on Δ alone"
    assert torch.allclose(dropped[~zero], 2 * full[~zero], atol=1e-10), \
        "dropout acts on the whole output h + Δ (kept entries are 2·Φ(h) at p = 0.5), not on Δ alone"


def test_loreft_computes_in_fp32_and_returns_the_input_dtype():
    m = _module(seed=10)  # fp32 parameters
    h = (3 * _h(seed=11, dtype=torch.float32)).bfloat16()
    out = m(h)
    assert out.dtype == torch.bfloat16, f"LoReFT of a bf16 input must return bf16, got {out.dtype}"
    with torch.no_grad():
        want = m(h.float()).bfloat16()
    assert torch.equal(out.detach(), want), "LoReFT must compute in fp32 (the method's dtype) and cast the result " \
                                            "to h's dtype once at the end"
    out.float().pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"LoReFT's {name} gets no gradient"
