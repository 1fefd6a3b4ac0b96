"""Part `pedro` (WALKTHROUGH.md §11): reft.PEDRO's three regions.

- __init__: per chosen layer, a generator nn.Sequential(Linear(d, rank), RationalActivation(), Linear(rank, q + v + u))
  whose last Linear is zero-initialised (weight and bias), so every scale starts at exactly 1;
- pool: x [B, T, d] -> [B, d]: the last prompt token ("last"), the first ("first") or the masked mean ("mean") over
  prompt_mask (1 = prompt token; padding and response tokens are 0; None = every token is prompt);
- block_input: z = generator(pool(x)) in fp32, (l_q, l_v, l_u) = 1 + z split into the q, v, u widths, each [B, 1, w].

Each case builds inputs from a seed, runs the student's code and returns its outputs; the grader compares them with
the reference's (teach/expected/pedro.pt). No case holds the solution, and none runs the model's forward: block_input
is called directly on random hidden states and prompt masks."""
import torch

from grading import Case, generator, guarded

WIDTHS = (8, 4, 12)  # q, v, u: all different, so a split in another order shows


def _randomise(method, seed, std=0.3):
    """Every generator parameter (down, rational coefficients, up) drawn from the seed, so the scales depend on all."""
    with torch.no_grad():
        for i, p in enumerate(method.parameters()):
            p.copy_(std * torch.randn(p.shape, generator=generator(seed, 100 + i)))
    return method


def _prompt_mask(seed, B, T, offset):
    """[B, T]: each row is left padding, then a prompt of >= 2 tokens, then response tokens (lengths from the seed;
    row 0 has both padding and response tokens)."""
    g = generator(seed, offset)
    rows = []
    for b in range(B):
        pad = int(torch.randint(1 if b == 0 else 0, 3, (1,), generator=g))
        n = int(torch.randint(2, T - pad + (0 if b == 0 else 1), (1,), generator=g))
        rows.append([0] * pad + [1] * n + [0] * (T - pad - n))
    return torch.tensor(rows)


def _loss(scales, seed, offset):
    return sum((t * torch.randn(t.shape, generator=generator(seed, offset + i))).sum() for i, t in enumerate(scales))


def _grads(method):
    return {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in method.named_parameters()}


def run_structure(seed):
    import reft as R
    g = generator(seed, 1)
    d, rank = int(torch.randint(6, 20, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g))
    widths = tuple(int(w) for w in torch.randint(2, 16, (3,), generator=g))
    method = R.PEDRO([0, 2], d, *widths, rank)
    out = {"generators": sorted(method.generators.keys()), "parameters": sum(p.numel() for p in method.parameters())}
    for key, gen in method.generators.items():
        layers = list(gen) if isinstance(gen, torch.nn.Sequential) else [gen]
        out[f"modules_{key}"] = [type(m).__name__ for m in layers]
        linears = [m for m in layers if isinstance(m, torch.nn.Linear)]
        out[f"linear_shapes_{key}"] = [[m.in_features, m.out_features, m.bias is not None] for m in linears]
        if len(linears) == 2:
            down, up = linears
            out[f"up_weight_is_zero_{key}"] = bool((up.weight == 0).all())
            out[f"up_bias_is_zero_{key}"] = bool(up.bias is not None and (up.bias == 0).all())
            out[f"down_weight_is_nonzero_{key}"] = bool((down.weight != 0).any())
    return out


def run_init(seed):
    import reft as R
    method = R.PEDRO([0, 1], 16, *WIDTHS, 3)
    with torch.no_grad():  # the down projections from the seed (their nn.Linear init draws on the global RNG)
        for i, gen in enumerate(method.generators.values()):
            gen[0].weight.copy_(torch.randn(gen[0].weight.shape, generator=generator(seed, 10 + i)))
            gen[0].bias.copy_(torch.randn(gen[0].bias.shape, generator=generator(seed, 20 + i)))
    x = torch.randn(2, 7, 16, generator=generator(seed, 2))
    mask = _prompt_mask(seed, 2, 7, 3)
    out = {}
    for layer in (0, 1):
        s = method.block_input(layer, x, mask, None)
        out.update({f"l{name}_{layer}": t for name, t in zip("qvu", s)})
    loss = _loss(s, seed, 30)
    if loss.requires_grad:
        loss.backward()
    grads = _grads(method)
    out["up_grad"] = [grads["generators.1.2.weight"], grads["generators.1.2.bias"]]
    return out


def run_pool(seed):
    import reft as R
    B, T, d = 4, 7, 4
    x = torch.randn(B, T, d, generator=generator(seed, 4))
    mask = _prompt_mask(seed, B, T, 5)
    out = {}
    for pooling in ("last", "first", "mean"):
        method = R.PEDRO([0], d, 2, 2, 2, 2, pooling)
        for kind, m in (("long", mask), ("bool", mask.bool()), ("float", mask.float())):
            out[f"{pooling}_{kind}_mask"] = method.pool(x, m)
        out[f"{pooling}_no_mask"] = method.pool(x, None)
    return out


def run_scales(seed):
    import reft as R
    method = _randomise(R.PEDRO([1], 16, *WIDTHS, 3), seed)
    x = torch.randn(2, 6, 16, generator=generator(seed, 6))
    mask = _prompt_mask(seed, 2, 6, 7)
    s = method.block_input(1, x, mask, None)
    out = {f"l{name}": t for name, t in zip("qvu", s)}
    out["layer_0_has_no_scales"] = method.block_input(0, x, mask, None) is None
    loss = _loss(s, seed, 40)
    if loss.requires_grad:
        loss.backward()
    out["grads"] = _grads(method)
    return out


def run_bf16(seed):
    import reft as R
    method = _randomise(R.PEDRO([1], 16, *WIDTHS, 3), seed)
    x = torch.randn(2, 6, 16, generator=generator(seed, 8)).bfloat16()
    mask = _prompt_mask(seed, 2, 6, 9)
    return guarded(["lq", "lv", "lu"], lambda: dict(zip(["lq", "lv", "lu"], method.block_input(1, x, mask, None))))


def run_prompt_only(seed):
    import reft as R
    B, T, d = 3, 8, 16
    x = torch.randn(B, T, d, generator=generator(seed, 11))
    mask = _prompt_mask(seed, B, T, 12)
    other = torch.where(mask.bool()[..., None], x, torch.randn(B, T, d, generator=generator(seed, 13)))
    out = {}
    for pooling in ("last", "first", "mean"):
        method = _randomise(R.PEDRO([0], d, *WIDTHS, 3, pooling), seed)
        for name, h in (("prompt", x), ("other_padding_and_response", other)):
            out[f"{pooling}_{name}"] = torch.cat([t[:, 0] for t in method.block_input(0, h, mask, None)], -1)
    return out


CASES = [
    Case("builds_one_generator_per_layer", run_structure,
         "PEDRO([0, 2], d, q, v, u, rank)'s generators (sizes from the seed)",
         hints={"parameters": "per layer: down (d+1)·rank + 10 rational coefficients + up (rank+1)·(q+v+u)",
                **{f"modules_{l}": "each generator is nn.Sequential(Linear(d, rank), RationalActivation(), "
                                   "Linear(rank, q + v + u))" for l in (0, 2)},
                **{f"linear_shapes_{l}": "[in, out, bias?] of the down projection Linear(d, rank) and the up "
                                         "projection Linear(rank, q + v + u), both with a bias" for l in (0, 2)},
                **{f"up_weight_is_zero_{l}": "PEDRO's scales must start at exactly 1 (zero-initialised up "
                                             "projection)" for l in (0, 2)},
                **{f"up_bias_is_zero_{l}": "PEDRO's scales must start at exactly 1 (zero-initialised up projection: "
                                           "the bias too)" for l in (0, 2)},
                **{f"down_weight_is_nonzero_{l}": "the down projection keeps nn.Linear's default init (a zero down "
                                                  "projection gets no gradient)" for l in (0, 2)}}),
    Case("scales_start_at_exactly_one", run_init,
         "block_input(l, x, prompt_mask) of a fresh PEDRO (down projections from the seed), and the gradient of the "
         "up projection", atol=1e-5, rtol=1e-5,
         hints={"up_grad": "the scales must be differentiable in the up projection (no detach, no torch.no_grad)"}),
    Case("pool_last_first_mean", run_pool,
         "pool(x, prompt_mask) for x [4, 7, 4], left padding and response tokens, masks long/bool/float and None",
         atol=1e-6, rtol=1e-6,
         hints={"last_no_mask": "prompt_mask None counts every token as prompt",
                "first_no_mask": "prompt_mask None counts every token as prompt",
                "mean_no_mask": "prompt_mask None counts every token as prompt"}),
    Case("scales_closed_form", run_scales,
         "block_input(1, x, prompt_mask) with every generator parameter random (widths q 8, v 4, u 12), and the "
         "gradients of every generator parameter", atol=1e-5, rtol=1e-5,
         hints={"grads": "the scales must be differentiable in every generator parameter (no detach, no "
                         "torch.no_grad)"}),
    Case("generator_runs_in_fp32", run_bf16, "block_input(1, x, prompt_mask) for a bf16 x (the generator is fp32)",
         atol=1e-5, rtol=1e-5),
    Case("scales_depend_on_the_prompt_only", run_prompt_only,
         "the scales (q, v, u concatenated) for x and for x with other padding and response tokens, each pooling",
         atol=1e-5, rtol=1e-5),
]
