"""Part `lora` (WALKTHROUGH.md §12): reft.LoRA.project, the LoRA baseline at seam 2 (the projections).

y = W x is a frozen projection's output (q, k or v); LoRA returns y + (α/r)·B A dropout(x), with A [r, in],
B [out, r], computed in fp32 and cast once to y's dtype.

Each case builds inputs from a seed, runs the student's code and returns its outputs; the grader compares them with
the reference's (teach/expected/lora.pt). No case holds the solution. (HF PEFT's LoRA on the same weights is the
instructor-side reference: tests/test_lora_peft.py, tests/test_references_methods.py.)"""
import torch

from grading import Case, generator, guarded

RANK, ALPHA = 4, 12.0  # α/r = 3: a missing or inverted scaling shows


def _lora(R, seed, shapes, layers=(0, 1), rank=RANK, dropout=0.0, random_B=True):
    """A LoRA whose A (and B, unless random_B is False: then B = 0, the init) are drawn from the seed."""
    method = R.LoRA(list(layers), shapes, rank, ALPHA, dropout)
    with torch.no_grad():
        for i, key in enumerate(sorted(method.A.keys())):
            method.A[key].copy_(torch.randn(method.A[key].shape, generator=generator(seed, 100 + i)))
            if random_B:
                method.B[key].copy_(0.3 * torch.randn(method.B[key].shape, generator=generator(seed, 200 + i)))
    return method


def run_update(seed):
    import reft as R
    method = _lora(R, seed, {"q": (16, 16), "v": (16, 8)})
    x = torch.randn(2, 5, 16, generator=generator(seed, 1))
    y = torch.randn(2, 5, 8, generator=generator(seed, 2))
    return guarded(["y"], lambda: {"y": method.project(1, "v", x, y, None)})


def run_square(seed):
    import reft as R
    method = _lora(R, seed, {"q": (RANK, RANK)})  # in = out = r: B A and A B both fit, and differ
    x = torch.randn(3, 4, RANK, generator=generator(seed, 3))
    y = torch.randn(3, 4, RANK, generator=generator(seed, 4))
    return {"y": method.project(0, "q", x, y, None)}


def run_other_projections(seed):
    import reft as R
    method = _lora(R, seed, {"q": (16, 16)}, layers=(0,))  # q of layer 0 only
    x = torch.randn(1, 3, 16, generator=generator(seed, 5))
    y = torch.randn(1, 3, 16, generator=generator(seed, 6))
    return guarded(["q_layer_0", "v_layer_0_unchanged", "q_layer_1_unchanged"], lambda: {
        "q_layer_0": method.project(0, "q", x, y, None),
        "v_layer_0_unchanged": method.project(0, "v", x, y, None) is y,
        "q_layer_1_unchanged": method.project(1, "q", x, y, None) is y})


def run_zero_B(seed):
    import reft as R
    method = _lora(R, seed, {"q": (16, 16), "v": (16, 8)}, random_B=False)  # B = 0, as LoRA starts
    x = torch.randn(2, 4, 16, generator=generator(seed, 7))
    y = torch.randn(2, 4, 8, generator=generator(seed, 8))
    w = torch.randn(2, 4, 8, generator=generator(seed, 9))

    def body():
        out = method.project(0, "v", x, y, None)
        loss = (out * w).sum()
        if loss.requires_grad:
            loss.backward()
        grad = {k: torch.zeros_like(p) if p.grad is None else p.grad for k, p in
                [("A", method.A["0_v"]), ("B", method.B["0_v"])]}
        return {"y": out, "grad_A": grad["A"], "grad_B": grad["B"]}
    return guarded(["y", "grad_A", "grad_B"], body)


def run_dropout(seed):
    import reft as R
    method = _lora(R, seed, {"q": (16, 16), "v": (16, 8)}, dropout=0.5).train()
    x = torch.randn(2, 4, 16, generator=generator(seed, 10))
    y = torch.randn(2, 4, 8, generator=generator(seed, 11))

    def body():
        torch.manual_seed(seed)  # the dropout mask: drawn once, on x's shape
        train = method.project(0, "v", x, y, None)
        return {"train": train, "eval": method.eval().project(0, "v", x, y, None)}
    return guarded(["train", "eval"], body)


def run_bf16(seed):
    import reft as R
    method = _lora(R, seed, {"q": (64, 64), "v": (64, 32)})
    x = (2 * torch.randn(2, 8, 64, generator=generator(seed, 12))).bfloat16()
    y = (2 * torch.randn(2, 8, 64, generator=generator(seed, 13))).bfloat16()
    return guarded(["y"], lambda: {"y": method.project(1, "q", x, y, None)})


CASES = [
    Case("update_closed_form", run_update,
         "LoRA.project(1, 'v', x, y) for x [2, 5, 16], y [2, 5, 8], rank 4, α 12 (A [4, 16], B [8, 4])",
         atol=1e-5, rtol=1e-5),
    Case("A_acts_first_then_B", run_square,
         "LoRA.project(0, 'q', x, y) with in = out = rank = 4 (A and B both [4, 4])", atol=1e-5, rtol=1e-5),
    Case("leaves_other_projections_and_layers_alone", run_other_projections,
         "LoRA (q of layer 0 only).project on q of layer 0, v of layer 0 and q of layer 1", atol=1e-5, rtol=1e-5,
         hints={"v_layer_0_unchanged": "a projection LoRA does not target must come back unchanged (y itself)",
                "q_layer_1_unchanged": "a layer LoRA does not act on must come back unchanged (y itself)"}),
    Case("zero_B_is_the_base_and_trains", run_zero_B,
         "LoRA.project with B = 0 (the init), and the gradients of A and B", atol=1e-6, rtol=1e-5,
         hints={"y": "with B = 0 (the init) LoRA must return exactly y",
                "grad_B": "B must get a gradient at init (it multiplies A x)"}),
    Case("dropout_acts_on_the_input", run_dropout,
         "LoRA.project with dropout 0.5, in training mode (torch.manual_seed(seed) first) and in eval mode",
         atol=1e-5, rtol=1e-5,
         hints={"train": "dropout must act on the input x of the update, (α/r)·B A dropout(x), in training mode",
                "eval": "in eval mode LoRA must not drop anything"}),
    Case("computes_in_fp32_and_returns_y_dtype", run_bf16,
         "LoRA.project(1, 'q', x, y) for bf16 x and y [2, 8, 64] (A, B fp32)", atol=0, rtol=0,
         hints={"y": "LoRA must compute in fp32 (the method's dtype) and cast y + update once to y's dtype"}),
]
