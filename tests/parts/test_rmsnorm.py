"""Part `rmsnorm` (WALKTHROUGH.md §2): model.RMSNorm.forward, y = x / sqrt(mean(x²) + eps) · weight, in fp32.

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import torch

import model as M


def _reference(x, weight, eps):
    """The closed form in fp64."""
    xd = x.double()
    return xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * weight.detach().double()


def _norm(d=16, eps=1e-6, seed=0):
    norm = M.RMSNorm(d, eps)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(d, generator=torch.Generator().manual_seed(seed)))
    return norm


def test_rmsnorm_closed_form():
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    norm = _norm()
    y = norm(x).detach()
    assert y.shape == x.shape, f"RMSNorm must keep the shape {tuple(x.shape)}, got {tuple(y.shape)}"
    want = _reference(x, norm.weight, 1e-6)
    err = float((y.double() - want).abs().max())
    assert err < 1e-5, f"RMSNorm differs from x / sqrt(mean(x²) + eps) · weight by {err:.2e}"


def test_rmsnorm_mean_over_the_last_axis_only():
    x = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(2))
    x[0] *= 100  # rows of very different scale: a mean over more than the last axis mixes them
    y = _norm()(x)
    want = _reference(x, _norm().weight, 1e-6)
    assert torch.allclose(y.double(), want, atol=1e-4, rtol=1e-4), \
        "RMSNorm must average x² over the last (feature) axis of each token only"
    ms = (y / _norm().weight).pow(2).mean(-1)
    assert torch.allclose(ms, torch.ones_like(ms), atol=1e-3), "after RMSNorm (before the weight) mean(y²) must be 1"


def test_rmsnorm_eps_inside_the_square_root():
    eps = 1e-2  # a large eps and tiny inputs: where eps goes matters
    x = 1e-3 * torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(3))
    norm = _norm(eps=eps)
    y = norm(x).double()
    inside = _reference(x, norm.weight, eps)
    outside = x.double() / (x.double().pow(2).mean(-1, keepdim=True).sqrt() + eps) * norm.weight.double()
    if torch.allclose(y, outside, rtol=1e-4, atol=1e-9):
        raise AssertionError("eps must be added inside the square root: x / sqrt(mean(x²) + eps), "
                             "not x / (sqrt(mean(x²)) + eps)")
    assert torch.allclose(y, inside, rtol=1e-4, atol=1e-9), "RMSNorm of tiny inputs is wrong: is eps used as given?"


def test_rmsnorm_computes_in_fp32_and_returns_the_input_dtype():
    x = (3 * torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(4))).bfloat16()
    norm = _norm(64)
    y = norm.bfloat16()(x)
    assert y.dtype == torch.bfloat16, f"RMSNorm of a bf16 input must return bf16, got {y.dtype}"
    # LLaMA's recipe (and HF's LlamaRMSNorm): normalise in fp32, cast back, then multiply by the weight
    want = norm.weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert torch.equal(y, want), "in bf16, RMSNorm must normalise in fp32, cast to bf16, then scale by the weight"


def test_rmsnorm_matches_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(5))
    ours, theirs = _norm(32, eps=1e-5), LlamaRMSNorm(32, eps=1e-5)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
    err = float((ours(x) - theirs(x)).abs().max())
    assert err < 1e-6, f"RMSNorm differs from transformers' LlamaRMSNorm by {err:.2e}"


def test_rmsnorm_weight_gets_a_gradient():
    norm = _norm()
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(6), requires_grad=True)
    norm(x).pow(2).sum().backward()
    assert norm.weight.grad is not None and float(norm.weight.grad.abs().sum()) > 0, \
        "RMSNorm's output must depend on self.weight (a learned per-feature scale)"
    assert x.grad is not None and torch.isfinite(x.grad).all(), "RMSNorm must be differentiable in x"
