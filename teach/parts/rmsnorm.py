"""Part `rmsnorm` (WALKTHROUGH.md §2): model.RMSNorm.forward, y = x / sqrt(mean(x²) + eps) · weight, in fp32.

Each case builds inputs from a seed, runs the student's RMSNorm and returns its outputs; the grader compares them
with the reference's (teach/expected/rmsnorm.pt). No case holds the solution."""
import torch

from grading import Case, generator


def _norm(M, d, eps, seed):
    norm = M.RMSNorm(d, eps)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(d, generator=generator(seed, 99)))
    return norm


def run_closed_form(seed):
    import model as M
    x = torch.randn(2, 5, 16, generator=generator(seed, 1))
    return {"y": _norm(M, 16, 1e-6, seed)(x)}


def run_rows_of_different_scale(seed):
    import model as M
    x = torch.randn(3, 4, 16, generator=generator(seed, 2))
    x[0] *= 100  # rows of very different scale: a mean over more than the last axis mixes them
    return {"y": _norm(M, 16, 1e-6, seed)(x)}


def run_large_eps_tiny_inputs(seed):
    import model as M
    x = 1e-3 * torch.randn(2, 3, 16, generator=generator(seed, 3))  # where eps goes matters here
    return {"y": _norm(M, 16, 1e-2, seed)(x)}


def run_bf16(seed):
    import model as M
    x = (3 * torch.randn(2, 7, 64, generator=generator(seed, 4))).bfloat16()
    return {"y": _norm(M, 64, 1e-6, seed).bfloat16()(x)}


def run_gradients(seed):
    import model as M
    norm = _norm(M, 16, 1e-6, seed)
    x = torch.randn(2, 3, 16, generator=generator(seed, 6), requires_grad=True)
    norm(x).pow(2).sum().backward()
    return {"weight_grad": norm.weight.grad, "x_grad": x.grad}


CASES = [
    Case("closed_form", run_closed_form, "RMSNorm(x) for x [2, 5, 16], eps 1e-6"),
    Case("mean_over_the_last_axis_only", run_rows_of_different_scale,
         "RMSNorm(x) for rows 100x apart in scale (mean x² over the last axis, each token alone)", atol=1e-4,
         rtol=1e-4),
    Case("eps_inside_the_square_root", run_large_eps_tiny_inputs, "RMSNorm(x) for tiny x and eps 1e-2",
         atol=1e-9, rtol=1e-4),
    Case("computes_in_fp32_and_returns_the_input_dtype", run_bf16,
         "RMSNorm(x) for a bf16 x (normalise in fp32, cast back to bf16, then scale by the weight)", atol=0, rtol=0),
    Case("weight_and_input_get_gradients", run_gradients, "the gradients of sum(RMSNorm(x)²)", atol=1e-4, rtol=1e-4,
         hints={"weight_grad": "the output must depend on self.weight, a learned per-feature scale"}),
]
