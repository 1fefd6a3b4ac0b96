"""Part `loreft` (WALKTHROUGH.md §8): reft.LoReFT.R, the sign-fixed Q factor of the free matrix A (R = qr(A).Qᵀ,
orthonormal rows), and LoReFT.forward, ReFT paper eq. (2): Φ(h) = h + Rᵀ(W h + b − R h), the activation on W h + b,
dropout on the whole output, computed in fp32 and returned in h's dtype.

Each case sets a LoReFT's A, W and b from a seed, runs the student's R or forward and returns the outputs; the grader
compares them with the reference's (teach/expected/loreft.pt). No case holds the solution."""
import torch

from grading import Case, generator

D, RANK = 16, 4


def _loreft(seed, k, orthonormal_A=False, act_fn="linear", dropout=0.0, dtype=torch.float64):
    """A LoReFT [d 16, rank 4] with A, W, b drawn from the seed: A free (columns neither unit nor orthogonal), or
    orthonormal (then R must be exactly Aᵀ)."""
    import reft
    g = generator(seed, k)
    m = reft.LoReFT(D, RANK, dropout=dropout, act_fn=act_fn).to(dtype)
    with torch.no_grad():
        if orthonormal_A:
            m.A.copy_(torch.nn.init.orthogonal_(torch.empty(D, RANK, dtype=torch.float64), generator=g))
        else:
            m.A.copy_(2 * torch.randn(D, RANK, generator=g, dtype=torch.float64) + 0.5)
        m.W.weight.copy_(torch.randn(RANK, D, generator=g, dtype=torch.float64))
        m.W.bias.copy_(torch.randn(RANK, generator=g, dtype=torch.float64))
    return m.eval()


def _h(seed, k, *shape, dtype=torch.float64):
    return torch.randn(*shape, D, generator=generator(seed, k), dtype=torch.float64).to(dtype)


def run_R_free_A(seed):
    return {"R": _loreft(seed, 1, dtype=torch.float32).R}


def check_orthonormal_rows(got, want):
    R = got["R"].double()
    err = float((R @ R.T - torch.eye(R.shape[0], dtype=torch.float64)).abs().max())
    return None if err < 1e-5 else f"LoReFT.R's rows are not orthonormal (max |R Rᵀ − I| = {err:.2e})"


def run_R_sign_fixed(seed):
    return {"R_of_a_free_A": _loreft(seed, 2).R, "R_of_an_orthonormal_A": _loreft(seed, 3, orthonormal_A=True).R}


def run_R_gradient(seed):
    m = _loreft(seed, 4)
    weights = torch.randn(RANK, D, generator=generator(seed, 5), dtype=torch.float64)
    loss = (m.R * weights).sum()
    if loss.requires_grad:  # else A gets no gradient: the output says so
        loss.backward()
    return {"A_grad": m.A.grad}


def run_subspace(seed):
    m = _loreft(seed, 6)
    with torch.no_grad():
        return {"phi": m(_h(seed, 7, 2, 3))}


def run_outside(seed):
    m = _loreft(seed, 8)
    with torch.no_grad():
        return {"phi_of_h_4x16": m(_h(seed, 9, 4)), "phi_of_h_2x2x2x16": m(_h(seed, 10, 2, 2, 2))}


def run_fp32(seed):
    m = _loreft(seed, 11, orthonormal_A=True, dtype=torch.float32)  # pyreft's setting: R = Aᵀ given
    with torch.no_grad():
        return {"phi": m(_h(seed, 12, 2, 3, dtype=torch.float32))}


def run_activation(seed):
    m = _loreft(seed, 13, act_fn="relu")
    with torch.no_grad():
        return {"phi": m(_h(seed, 14, 2, 3))}


def run_dropout(seed):
    m = _loreft(seed, 15, dropout=0.5)
    h = _h(seed, 16, 2, 3)
    with torch.no_grad():
        full = m(h)
        m.train()
        torch.manual_seed(seed)  # the dropout mask: the same draw in the reference's run and the student's
        dropped = m(h)
    return {"phi_eval": full, "phi_train": dropped}


def run_bf16(seed):
    m = _loreft(seed, 17, dtype=torch.float32)
    h = (3 * _h(seed, 18, 2, 3, dtype=torch.float32)).bfloat16()
    with torch.no_grad():
        return {"phi": m(h), "phi_of_the_fp32_input": m(h.float())}


def check_cast_once(got, want):
    if not torch.equal(got["phi"], got["phi_of_the_fp32_input"].bfloat16()):
        return "LoReFT must compute in fp32 (the method's dtype) and cast the result to h's dtype once at the end: " \
               "Φ(h) of a bf16 h differs from Φ(h.float()) cast to bf16"
    return None


def run_gradients(seed):
    m = _loreft(seed, 19, dtype=torch.float32)
    m(_h(seed, 20, 2, 3, dtype=torch.float32)).pow(2).sum().backward()
    return {"A_grad": m.A.grad, "W_grad": m.W.weight.grad, "b_grad": m.W.bias.grad}


CASES = [
    Case("R_has_orthonormal_rows", run_R_free_A, "LoReFT.R for a free A [16, 4] in fp32", check=check_orthonormal_rows,
         hints={"R": "R = qr(A).Qᵀ, [r, d] with orthonormal rows"}),
    Case("R_is_the_sign_fixed_q_factor", run_R_sign_fixed, "LoReFT.R in fp64 for a free A and an orthonormal A",
         atol=1e-9, rtol=1e-9,
         hints={"R_of_an_orthonormal_A": "an orthonormal A must give R = Aᵀ: multiply Q's columns by "
                                         "sign(diag(qr(A).R))"}),
    Case("R_is_differentiable_in_A", run_R_gradient, "the gradient to A of sum(R ⊙ w) for a random w, in fp64",
         atol=1e-9, rtol=1e-7,
         hints={"A_grad": "compute R from self.A with torch ops (no detach, no torch.no_grad): training moves A"}),
    Case("replaces_the_subspace_coordinates", run_subspace, "LoReFT(h) in fp64 for h [2, 3, 16]", atol=1e-9,
         rtol=1e-9, hints={"phi": "Φ(h) = h + Rᵀ(W h + b − R h): R Φ(h) = W h + b"}),
    Case("changes_nothing_outside_the_subspace", run_outside,
         "LoReFT(h) in fp64 for h [4, 16] and [2, 2, 2, 16] (any leading shape)", atol=1e-9, rtol=1e-9),
    Case("matches_eq2_in_fp32", run_fp32, "LoReFT(h) in fp32 for an orthonormal A and h [2, 3, 16]", atol=1e-5,
         rtol=1e-5),
    Case("activation_applies_to_W_h_plus_b", run_activation, "LoReFT(h) in fp64 with act_fn='relu'", atol=1e-9,
         rtol=1e-9),
    Case("dropout_on_the_whole_output", run_dropout, "LoReFT(h) in fp64 with dropout 0.5, in eval and train mode",
         atol=1e-9, rtol=1e-9,
         hints={"phi_train": "in train mode nn.Dropout(dropout) acts on the whole output h + Δ"}),
    Case("computes_in_fp32_and_returns_the_input_dtype", run_bf16,
         "LoReFT(h) of an fp32 LoReFT for a bf16 h and for the same h in fp32", atol=1e-2, rtol=1e-2,
         check=check_cast_once),
    Case("every_parameter_gets_gradients", run_gradients, "the gradients of sum(LoReFT(h)²) in fp32", atol=1e-4,
         rtol=1e-4),
]
