"""Part `direft` (WALKTHROUGH.md §9): reft.DiReFT.forward, ReFT paper eq. (3): Φ(h) = h + W₂ᵀ(W₁ h + b), in row
form h + act(h W₁ᵀ + b) W₂ with W₂ [r, d] used as it is (no orthogonality, no −R h term), dropout on the whole
output, computed in fp32 and returned in h's dtype.

Each case sets a DiReFT's W₁, b and W₂ from a seed, runs the student's forward and returns the outputs; the grader
compares them with the reference's (teach/expected/direft.pt). No case holds the solution."""
import torch

from grading import Case, generator

D, RANK = 16, 4


def _direft(seed, k, act_fn="linear", dropout=0.0, dtype=torch.float64):
    """A DiReFT [d 16, rank 4] with W₁, b, W₂ drawn from the seed (W₂'s rows neither unit nor orthogonal)."""
    import reft
    g = generator(seed, k)
    m = reft.DiReFT(D, RANK, dropout=dropout, act_fn=act_fn).to(dtype)
    with torch.no_grad():
        m.W1.weight.copy_(torch.randn(RANK, D, generator=g, dtype=torch.float64))
        m.W1.bias.copy_(torch.randn(RANK, generator=g, dtype=torch.float64))
        m.W2.copy_(torch.randn(RANK, D, generator=g, dtype=torch.float64) + 0.3)
    return m.eval()


def _h(seed, k, *shape, dtype=torch.float64):
    return torch.randn(*shape, D, generator=generator(seed, k), dtype=torch.float64).to(dtype)


def run_closed_form(seed):
    m = _direft(seed, 1)
    with torch.no_grad():
        return {"phi": m(_h(seed, 2, 2, 3))}


def run_no_minus_Rh(seed):
    m = _direft(seed, 3)
    h = _h(seed, 4, 2, 3)
    with torch.no_grad():
        m.W1.bias.copy_(-(h[0, 0] @ m.W1.weight.T))  # an input: the bias that zeroes W₁ h + b at h[0, 0]
        phi = m(h)
        m.W2.mul_(3.0)
        phi3 = m(h)
    return {"phi": phi, "phi_with_3_W2": phi3}


def run_W1_zero(seed):
    m = _direft(seed, 5)
    with torch.no_grad():
        m.W1.weight.zero_()
        return {"phi": m(_h(seed, 6, 2, 3))}


def run_fp32(seed):
    m = _direft(seed, 7, dtype=torch.float32)
    with torch.no_grad():
        return {"phi": m(_h(seed, 8, 2, 3, dtype=torch.float32))}


def run_activation(seed):
    m = _direft(seed, 9, act_fn="relu")
    with torch.no_grad():
        return {"phi": m(_h(seed, 10, 2, 3))}


def run_dropout(seed):
    m = _direft(seed, 11, dropout=0.5)
    h = _h(seed, 12, 2, 3)
    with torch.no_grad():
        full = m(h)
        m.train()
        torch.manual_seed(seed)  # the dropout mask: the same draw in the reference's run and the student's
        dropped = m(h)
    return {"phi_eval": full, "phi_train": dropped}


def run_bf16(seed):
    m = _direft(seed, 13, dtype=torch.float32)
    h = (3 * _h(seed, 14, 2, 3, dtype=torch.float32)).bfloat16()
    with torch.no_grad():
        return {"phi": m(h), "phi_of_the_fp32_input": m(h.float())}


def check_cast_once(got, want):
    if not torch.equal(got["phi"], got["phi_of_the_fp32_input"].bfloat16()):
        return "DiReFT must compute in fp32 (the method's dtype) and cast the result to h's dtype once at the end: " \
               "Φ(h) of a bf16 h differs from Φ(h.float()) cast to bf16"
    return None


def run_gradients(seed):
    m = _direft(seed, 15, dtype=torch.float32)
    m(_h(seed, 16, 2, 3, dtype=torch.float32)).pow(2).sum().backward()
    return {"W1_grad": m.W1.weight.grad, "b_grad": m.W1.bias.grad, "W2_grad": m.W2.grad}


CASES = [
    Case("closed_form", run_closed_form, "DiReFT(h) in fp64 for h [2, 3, 16]", atol=1e-9, rtol=1e-9,
         hints={"phi": "Φ(h) = h + W₂ᵀ(W₁ h + b), in row form h + (h W₁ᵀ + b) W₂"}),
    Case("has_no_projection_or_minus_Rh_term", run_no_minus_Rh,
         "DiReFT(h) in fp64 where W₁ h + b = 0 at h[0, 0], then with W₂ scaled by 3", atol=1e-9, rtol=1e-9,
         hints={"phi": "where W₁ h + b = 0, Φ(h) must equal h: the edit is W₂ᵀ(W₁ h + b) and nothing else",
                "phi_with_3_W2": "W₂ is used as it is: scaling W₂ by 3 scales the edit Φ(h) − h by 3"}),
    Case("bias_and_projection_direction", run_W1_zero, "DiReFT(h) in fp64 with W₁ = 0 (so Φ(h) = h + b W₂)",
         atol=1e-9, rtol=1e-9),
    Case("matches_eq3_in_fp32", run_fp32, "DiReFT(h) in fp32 for h [2, 3, 16]", atol=1e-5, rtol=1e-5),
    Case("activation_applies_to_W1_h_plus_b", run_activation, "DiReFT(h) in fp64 with act_fn='relu'", atol=1e-9,
         rtol=1e-9),
    Case("dropout_on_the_whole_output", run_dropout, "DiReFT(h) in fp64 with dropout 0.5, in eval and train mode",
         atol=1e-9, rtol=1e-9,
         hints={"phi_train": "in train mode nn.Dropout(dropout) acts on the whole output h + Δ"}),
    Case("computes_in_fp32_and_returns_the_input_dtype", run_bf16,
         "DiReFT(h) of an fp32 DiReFT for a bf16 h and for the same h in fp32", atol=1e-2, rtol=1e-2,
         check=check_cast_once),
    Case("every_parameter_gets_gradients", run_gradients, "the gradients of sum(DiReFT(h)²) in fp32", atol=1e-4,
         rtol=1e-4),
]
