"""Part `pedro` (WALKTHROUGH.md §11): reft.PEDRO's three regions.

- __init__: per chosen layer, a generator nn.Sequential(Linear(d, rank), RationalActivation(), Linear(rank, q + v + u))
  whose last Linear is zero-initialised (weight and bias), so every scale starts at exactly 1;
- pool: x [B, T, d] -> [B, d]: the last prompt token ("last"), the first ("first") or the masked mean ("mean") over
  prompt_mask (1 = prompt token; padding and response tokens are 0; None = every token is prompt);
- scales: z = generator(pool(x)) in fp32, (l_q, l_v, l_u) = 1 + z split into the q, v, u widths, each [B, 1, width].

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import torch

import model as M
import reft

CFG = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)
Q_W, V_W, U_W = 64, 32, 96  # H·d_h, H_kv·d_h, d_ff of CFG


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _llama(seed=0):
    torch.manual_seed(seed)
    model = M.Llama(M.LlamaConfig(**CFG)).eval()
    return model.requires_grad_(False)


def _pedro(layers=(0, 1), pooling="last", rank=4, d=CFG["hidden_size"], widths=(Q_W, V_W, U_W), seed=0):
    torch.manual_seed(seed)
    return reft.PEDRO(list(layers), d, *widths, rank, pooling)


def _randomise(method, seed=1, std=0.3):
    """Nonzero up projections (zero at init), so the scales really depend on the input."""
    g = _gen(seed)
    with torch.no_grad():
        for gen in method.generators.values():
            gen[2].weight.copy_(std * torch.randn(gen[2].weight.shape, generator=g))
            gen[2].bias.copy_(std * torch.randn(gen[2].bias.shape, generator=g))
    return method


def _batch(T=7, seed=123):
    """Two prompts of T tokens, the second left-padded by 3 (pad id 0, mask 0)."""
    ids = torch.randint(3, CFG["vocab_size"], (2, T), generator=_gen(seed))
    mask = torch.ones(2, T, dtype=torch.long)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


# -----------------------------------------------------------------------------------------------------------------


def test_pedro_builds_one_generator_per_layer():
    d, rank, widths = 16, 3, (8, 4, 12)
    method = _pedro(layers=(0, 2), d=d, rank=rank, widths=widths)
    assert sorted(method.generators.keys()) == ["0", "2"], \
        f"PEDRO must build one generator per chosen layer, keyed str(layer): expected ['0', '2'], got " \
        f"{sorted(method.generators.keys())}"
    for key, gen in method.generators.items():
        kinds = [type(m).__name__ for m in gen] if isinstance(gen, torch.nn.Sequential) else type(gen).__name__
        assert isinstance(gen, torch.nn.Sequential) and len(gen) == 3 and isinstance(gen[0], torch.nn.Linear) \
            and isinstance(gen[1], reft.RationalActivation) and isinstance(gen[2], torch.nn.Linear), \
            f"each generator must be nn.Sequential(Linear(d, rank), RationalActivation(), Linear(rank, q + v + u)), " \
            f"got {kinds}"
        down, up = gen[0], gen[2]
        assert (down.in_features, down.out_features) == (d, rank) and down.bias is not None, \
            f"the down projection must be Linear(hidden_size={d}, rank={rank}) with a bias, got " \
            f"Linear({down.in_features}, {down.out_features}, bias={down.bias is not None})"
        assert (up.in_features, up.out_features) == (rank, sum(widths)) and up.bias is not None, \
            f"the up projection must be Linear(rank={rank}, q + v + u = {sum(widths)}) with a bias, got " \
            f"Linear({up.in_features}, {up.out_features}, bias={up.bias is not None})"
        assert torch.count_nonzero(up.weight) == 0 and torch.count_nonzero(up.bias) == 0, \
            "PEDRO's scales must start at exactly 1 (zero-initialised up projection: weight and bias 0)"
        assert down.weight.abs().sum() > 0, \
            "the down projection keeps nn.Linear's default init (a zero down projection would get no gradient)"
    n = sum(p.numel() for p in method.parameters())
    assert n == 2 * ((d + 1) * rank + 10 + (rank + 1) * sum(widths)), \
        f"PEDRO's parameters must be, per layer, down (d+1)·rank + 10 rational + up (rank+1)·(q+v+u); got {n}"


def test_pedro_scales_start_at_exactly_one_and_leave_the_model_unchanged():
    model, method = _llama(), _pedro()
    ids, mask = _batch()
    x = torch.randn(2, 7, CFG["hidden_size"], generator=_gen(2))
    for layer in (0, 1):
        s = method.block_input(layer, x, mask, None)
        assert s is not None and len(s) == 3, "block_input must return Scales(q, v, u) for a chosen layer"
        for name, t, w in zip("qvu", s, (Q_W, V_W, U_W)):
            assert tuple(t.shape) == (2, 1, w), f"scale l_{name} must be [B, 1, {w}], got {tuple(t.shape)}"
            assert torch.equal(t, torch.ones_like(t)), \
                "PEDRO's scales must start at exactly 1 (zero-initialised up projection, scales = 1 + z)"
    with torch.no_grad():
        base, out = model(ids, mask), model(ids, mask, method=method)
    assert torch.equal(out, base), "a freshly built PEDRO must leave the model's logits exactly unchanged (l ≡ 1)"
    s = method.block_input(1, x, mask, None)
    loss = sum((t * torch.randn(t.shape, generator=_gen(3))).sum() for t in s)
    assert loss.requires_grad, "the scales must be differentiable in every generator parameter (no detach, no_grad)"
    loss.backward()
    up = method.generators["1"][2]  # at l ≡ 1 the zero-initialised up projection moves first
    assert up.weight.grad is not None and up.weight.grad.abs().sum() > 0 and up.bias.grad.abs().sum() > 0, \
        "the up projection gets no gradient through the scales at init"


def test_pedro_pool_last_first_mean():
    # token t of row b holds 10b + t in every feature
    x = (10 * torch.arange(3)[:, None] + torch.arange(6)[None]).float()[..., None].expand(3, 6, 4).contiguous()
    mask = torch.tensor([[0, 0, 1, 1, 1, 0],  # left padding and one response token after the prompt
                         [1, 1, 1, 0, 0, 0],  # a prompt followed by response (or right padding)
                         [1, 1, 1, 1, 1, 1]])  # all prompt
    expected = {"last": [4, 12, 25], "first": [2, 10, 20], "mean": [3, 11, 22.5]}
    messages = {"last": "PEDRO must pool the last prompt token (not padding or response tokens)",
                "first": "pooling 'first' must take the first prompt token of each row (not padding)",
                "mean": "pooling 'mean' must average the prompt tokens only (prompt_mask = 1; not padding or "
                        "response tokens)"}
    for pooling, want in expected.items():
        method = _pedro(layers=(0,), pooling=pooling, d=4, widths=(2, 2, 2), rank=2)
        for m in (mask, mask.bool(), mask.float()):
            g = method.pool(x, m)
            assert tuple(g.shape) == (3, 4), f"pool must return [B, d] = (3, 4), got {tuple(g.shape)}"
            got = g[:, 0].tolist()
            assert torch.allclose(g, torch.tensor(want, dtype=torch.float32)[:, None].expand(3, 4)), \
                f"{messages[pooling]}: expected rows {want}, got {got} (prompt_mask {m.dtype})"
    assert _pedro(layers=(0,), pooling="last", d=4, widths=(2, 2, 2), rank=2).pool(x, None)[:, 0].tolist() == \
        [5, 15, 25], "prompt_mask None counts every token as prompt: 'last' pools the last token"
    assert _pedro(layers=(0,), pooling="mean", d=4, widths=(2, 2, 2), rank=2).pool(x, None)[:, 0].tolist() == \
        [2.5, 12.5, 22.5], "prompt_mask None counts every token as prompt: 'mean' averages every token"


def test_pedro_scales_closed_form():
    d, rank, widths = 16, 3, (8, 4, 12)
    method = _randomise(_pedro(layers=(1,), pooling="last", d=d, rank=rank, widths=widths), seed=3)
    gen = method.generators["1"]
    with torch.no_grad():
        gen[1].numerator.copy_(torch.tensor([0.1, -0.7, 0.3, 0.25, -0.05, 0.02]))
        gen[1].denominator.copy_(torch.tensor([-0.4, 1.3, -0.2, 0.6]))  # negative b: |·| matters
    x = torch.randn(2, 5, d, generator=_gen(4))
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    s = method.block_input(1, x, mask, None)
    assert method.block_input(0, x, mask, None) is None, "a layer without a generator has no scales"
    # the closed form in fp64: g = x at the last prompt token, z = W_up σ(W_down g + b_down) + b_up, l = 1 + z
    g = x.double()[torch.arange(2), torch.tensor([3, 4])]
    h = g @ gen[0].weight.double().T + gen[0].bias.double()
    a, b = gen[1].numerator.double(), gen[1].denominator.double()
    sig = sum(a[k] * h ** k for k in range(6)) / (1 + sum((b[k - 1] * h ** k).abs() for k in range(1, 5)))
    z = sig @ gen[2].weight.double().T + gen[2].bias.double()
    want = (1 + z).split(widths, -1)
    assert isinstance(s, tuple) and len(s) == 3, "block_input must return Scales(q, v, u)"
    for name, t, w in zip("qvu", s, widths):
        assert tuple(t.shape) == (2, 1, w), f"scales are 1 + z split into q, v, u widths: l_{name} must be " \
                                            f"[B, 1, {w}], got {tuple(t.shape)}"
        assert t.dtype == torch.float32, f"the scales must stay fp32, got {t.dtype}"
    got = torch.cat([t[:, 0] for t in s], -1).double()
    if not torch.allclose(got, 1 + z, atol=1e-5, rtol=1e-5):
        if torch.allclose(got, z, atol=1e-5, rtol=1e-5):
            raise AssertionError("scales are 1 + z split into q, v, u widths: got z without the 1 +")
        raise AssertionError(f"scales are 1 + z split into q, v, u widths, z = generator(pool(x)): they differ from "
                             f"the closed form by {float((got - (1 + z)).abs().max()):.2e}")
    for name, t, w in zip("qvu", s, want):
        assert torch.allclose(t[:, 0].double(), w, atol=1e-5, rtol=1e-5), \
            f"scales are 1 + z split into q, v, u widths (in that order): l_{name} is wrong"
    # a bf16 model: the generator still runs in fp32 and the scales stay fp32
    try:
        s16 = method.block_input(1, x.bfloat16(), mask, None)
    except RuntimeError as e:
        if isinstance(e, NotImplementedError):
            raise
        raise AssertionError(f"on a bf16 input, run the generator in fp32 (cast x to the generator's dtype): "
                             f"{type(e).__name__}: {e}") from None
    assert all(t.dtype == torch.float32 for t in s16), \
        "the scales must stay fp32 for a bf16 input (run the generator in its own fp32 dtype)"
    err = float(max((t - u).detach().abs().max() for t, u in zip(s16, s)))
    assert err < 0.1, f"the scales of a bf16 input are far from the fp32 ones ({err:.2e})"
    # every generator parameter trains through the scales
    loss = sum((t * torch.randn(t.shape, generator=_gen(5))).sum() for t in s)
    assert loss.requires_grad, "the scales must be differentiable in every generator parameter (no detach, no_grad)"
    loss.backward()
    bad = [n for n, p in method.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not bad, f"the scales must be differentiable in every generator parameter; no gradient for {bad}"


def test_pedro_scales_depend_on_the_prompt_only():
    """At prefill the model caches the scales (cache.method_state[layer]); they must not change when response tokens
    follow the prompt (prompt_mask 0) or when the padding ids change, and must change with the prompt."""
    model, (ids, mask) = _llama(seed=6), _batch(seed=7)
    response = torch.randint(3, CFG["vocab_size"], (2, 4), generator=_gen(8))
    scales = {}
    for pooling in ("last", "mean"):
        method = _randomise(_pedro(pooling=pooling, seed=9), seed=10)
        with torch.no_grad():
            c1 = model.new_cache(2, 16)
            model(ids, mask, c1, method)  # prompt_mask defaults to the attention mask
            c2 = model.new_cache(2, 16)
            model(torch.cat([ids, response], 1), torch.cat([mask, torch.ones_like(response)], 1), c2, method,
                  prompt_mask=torch.cat([mask, torch.zeros_like(response)], 1))
            other = ids.clone()
            other[1, :3] = 50  # other padding ids: padding is not prompt
            c3 = model.new_cache(2, 16)
            model(other, mask, c3, method)
            c4 = model.new_cache(2, 16)
            changed = ids.clone()
            changed[:, -1] = (changed[:, -1] + 1) % CFG["vocab_size"]  # another last prompt token
            model(changed, mask, c4, method)
        assert sorted(c1.method_state) == [0, 1], "the model caches each chosen layer's scales at prefill"
        for layer in (0, 1):
            for name, s1, s2, s3, s4 in zip("qvu", c1.method_state[layer], c2.method_state[layer], c3.method_state[layer],
                                            c4.method_state[layer]):
                assert torch.allclose(s2, s1, atol=1e-5, rtol=1e-5), \
                    f"the scales must depend on the prompt only: response tokens (prompt_mask 0) change l_{name} " \
                    f"in layer {layer} (pooling {pooling!r})"
                assert torch.allclose(s3, s1, atol=1e-5, rtol=1e-5), \
                    f"the scales must depend on the prompt only: padding ids change l_{name} in layer {layer} " \
                    f"(pooling {pooling!r})"
                assert (s4 - s1).abs().max() > 1e-3, \
                    f"the scales must depend on the prompt: another last prompt token leaves l_{name} unchanged " \
                    f"in layer {layer} (pooling {pooling!r})"
        scales[pooling] = c1.method_state[1]
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(scales["last"], scales["mean"])), \
        "pooling 'last' and 'mean' must give different scales"


def test_pedro_constant_scales_equal_peft_ia3():
    """With W_up = 0 the scales are 1 + b_up for every prompt: (IA)³ scaling of q_proj, v_proj and up_proj outputs
    (PEFT's IA3 with feedforward_modules=[] scales the module outputs), on transformers' LLaMA with the same weights."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM
    model = _llama(seed=11)
    hf = LlamaForCausalLM(LlamaConfig(**CFG, rms_norm_eps=1e-6, tie_word_embeddings=False)).eval()
    hf.load_state_dict({(k if k == "lm_head.weight" else "model." + k): v for k, v in model.state_dict().items()})
    ia3 = peft.get_peft_model(hf, peft.IA3Config(target_modules=["q_proj", "v_proj", "up_proj"],
                                                 feedforward_modules=[])).eval()
    method = _pedro(seed=12)
    g = _gen(13)
    with torch.no_grad():
        for layer in (0, 1):
            gen = method.generators[str(layer)]
            gen[2].bias.copy_(0.5 * torch.randn(Q_W + V_W + U_W, generator=g))  # W_up stays 0: constant z = b_up
            lq, lv, lu = (1 + gen[2].bias).split([Q_W, V_W, U_W])
            blk = ia3.base_model.model.model.layers[layer]
            for module, vec in ((blk.self_attn.q_proj, lq), (blk.self_attn.v_proj, lv), (blk.mlp.up_proj, lu)):
                module.ia3_l["default"].copy_(vec[:, None])  # [out, 1]
    ids, mask = _batch(seed=14)
    real = mask.bool()
    with torch.no_grad():
        ours, base = model(ids, mask, method=method), model(ids, mask)
        theirs = ia3(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert (theirs - base)[real].abs().max() > 1e-2  # the scales matter: the comparison is not vacuous
    err = float((ours - theirs)[real].abs().max())
    assert err < 1e-4, f"with constant scales (W_up = 0) PEDRO differs from PEFT's (IA)³ on q_proj, v_proj, up_proj " \
                       f"by {err:.2e}: scales are 1 + z split into q, v, u widths"
