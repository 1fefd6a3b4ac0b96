"""Prefix-tuning and PEDRO (reft.py seams 2 and 3) on tiny random models, fp32 on CPU.

Prefix-tuning is checked against HF PEFT (plain and reparametrized prefix); PEDRO has no reference code, so it is
checked against (IA)³ (HF PEFT) with the generator's output held constant, plus its invariants.
"""
import pytest
import torch

import model as M
import reft as R
from support import saving
from support.checkpoints import from_pretrained

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

P = 3  # virtual tokens
LLAMA = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, max_position_embeddings=64)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(path)
    return path


@pytest.fixture
def llama(llama_dir):
    return from_pretrained(str(llama_dir), dtype=torch.float32)


@pytest.fixture
def hf_llama(llama_dir):
    hf = transformers.LlamaForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id, hf.generation_config.pad_token_id = None, 0  # always 6 new tokens
    return hf


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_roberta")
    cfg = transformers.RobertaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, pad_token_id=1)
    transformers.RobertaModel(cfg).save_pretrained(path)
    return path


def batch():
    """Two prompts of 7 tokens, the second left-padded by 3 (pad id 0, mask 0)."""
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(3, 128, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


def hf_positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)  # our model's positions for left padding (PEFT adds P itself)


def cached_vs_full(model, method, ids, mask, new):
    """Logits predicting each of `new` [B, n]: through a KV cache (prefill, then one token per call) and from one
    uncached forward over the whole sequence with prompt_mask = the prompt's real tokens. -> 2x [B, n, vocab]."""
    B, T = ids.shape
    cache = model.new_cache(B, method.num_virtual_tokens + T + new.shape[1])
    steps, m = [model(ids, mask, cache, method, prompt_mask=mask)[:, -1]], mask
    for i in range(new.shape[1] - 1):
        m = torch.cat([m, m.new_ones(B, 1)], 1)
        steps.append(model(new[:, i:i + 1], m, cache, method)[:, -1])
    full_mask = torch.cat([mask, mask.new_ones(new.shape)], 1)
    prompt_mask = torch.cat([mask, mask.new_zeros(new.shape)], 1)
    full = model(torch.cat([ids, new], 1), full_mask, None, method, prompt_mask=prompt_mask)[:, T - 1:-1]
    return torch.stack(steps, 1), full


def grads_nonzero(method):
    bad = [n for n, p in method.named_parameters() if p.grad is None or not p.grad.isfinite().all()
           or p.grad.abs().sum() == 0]
    assert not bad, f"no (or non-finite) gradient for {bad}"


# -----------------------------------------------------------------------------------------------------------------
# Prefix-tuning


def peft_prefix_to_ours(w, num_layers, n_kv, head_dim):
    """PEFT's flat prefix [P, 2L·H_kv·d_h] -> ours [L, 2, H_kv, P, d_h] (PEFT's layout: view [P, 2L, H_kv, d_h];
    layer i keys = chunk 2i, values = chunk 2i + 1)."""
    return w.view(w.shape[0], 2 * num_layers, n_kv, head_dim).permute(1, 2, 0, 3).reshape(
        num_layers, 2, n_kv, w.shape[0], head_dim)


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_matches_peft(llama, hf_llama, projection):
    torch.manual_seed(1)
    pcfg = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=projection,
                                   encoder_hidden_size=48)
    pm = peft.get_peft_model(hf_llama, pcfg).eval()
    enc = pm.prompt_encoder["default"]
    method = R.build_method(R.MethodConfig(method="prefix", num_virtual_tokens=P, prefix_projection=projection,
                                           prefix_hidden_size=48), llama).eval()
    with torch.no_grad():
        if projection:  # same reparametrization, same weights
            method.embedding.copy_(enc.embedding.weight)
            for i in (0, 2):
                method.mlp[i].load_state_dict(enc.transform[i].state_dict())
        else:
            assert enc.embedding.weight.shape == (P, 2 * 2 * 2 * 16)  # [P, 2·L·H_kv·d_h]: GQA-sized
            method.prefix.copy_(peft_prefix_to_ours(enc.embedding.weight, 2, 2, 16))
    ids, mask = batch()
    real = mask.bool()
    with torch.no_grad():
        ours = llama(ids, mask, method=method)
        theirs = pm(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
        base = llama(ids, mask)
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-4)
    assert (ours - base)[real].abs().max() > 1e-2  # the prefix matters: the comparison is not vacuous
    new = M.generate(llama, ids, mask, max_new_tokens=6, method=method)
    # PEFT's greedy tokens from its own forward, one full recomputation per step (PEFT's cached `generate` is not the
    # reference: with transformers 5.x it drops the prefix, "Both past_key_values and cache are set ... ignoring")
    hf_ids, hf_mask = ids, mask
    with torch.no_grad():
        for _ in range(6):
            nxt = pm(input_ids=hf_ids, attention_mask=hf_mask, position_ids=hf_positions(hf_mask)).logits[:, -1].argmax(-1)
            hf_ids, hf_mask = torch.cat([hf_ids, nxt[:, None]], 1), torch.cat([hf_mask, hf_mask.new_ones(2, 1)], 1)
    assert new.tolist() == hf_ids[:, ids.shape[1]:].tolist()
    assert new.tolist() != M.generate(llama, ids, mask, max_new_tokens=6).tolist()  # the prefix changes the tokens
    if projection:  # PEFT saves the MLP's output: our folded prefix holds the same numbers in our layout
        flat = enc(torch.arange(P)[None])[0].detach()  # [P, 2L·H_kv·d_h]
        torch.testing.assert_close(method.fold().prefix, peft_prefix_to_ours(flat, 2, 2, 16), atol=1e-6, rtol=0)


def test_prefix_cache_equals_recompute_and_trains(llama):
    method = R.build_method(R.MethodConfig(method="prefix", num_virtual_tokens=P), llama)
    with torch.no_grad():
        method.prefix.normal_()  # O(1) keys/values so that the prefix visibly changes the output
    ids, mask = batch()
    new = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        cached, full = cached_vs_full(llama, method, ids, mask, new)
        base_cached, _ = cached_vs_full(llama, R.Method(), ids, mask, new)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    assert (cached - base_cached).abs().max() > 1e-2
    assert M.generate(llama, ids, mask, 8, method=method).tolist() == \
        M.generate(llama, ids, mask, 8, method=method, use_cache=False).tolist()
    # parameters exist, are the only trainable ones, and every layer's keys and values get a gradient
    assert [n for n, _ in method.named_parameters()] == ["prefix"] and method.prefix.shape == (2, 2, 2, P, 16)
    k, v = method.extra_kv(1, *2 * [torch.zeros(5, method.kv_shape[1], 0, method.kv_shape[2])])
    assert k.shape == v.shape == (5, 2, P, 16)  # the prefix alone before no real keys, for every row
    assert torch.equal(k[4], method.prefix[1, 0]) and torch.equal(v[0], method.prefix[1, 1])
    llama.requires_grad_(False)
    llama(ids, mask, method=method)[mask.bool()].logsumexp(-1).sum().backward()
    assert (method.prefix.grad.flatten(2).abs().sum(-1) > 0).all()  # per (layer, key/value)


def test_prefix_projection_fold(llama):
    method = R.build_method(R.MethodConfig(method="prefix", num_virtual_tokens=P, prefix_projection=True,
                                           prefix_hidden_size=32), llama)
    assert method.prefix is None and method.embedding.shape == (P, 2 * 16)
    ids, mask = batch()
    llama.requires_grad_(False)
    unfolded = llama(ids, mask, method=method)
    unfolded[mask.bool()].logsumexp(-1).sum().backward()
    grads_nonzero(method)  # embedding and both Linears train
    with torch.no_grad():
        folded = llama(ids, mask, method=method.fold())
    assert [n for n, _ in method.named_parameters()] == ["prefix"] and method.prefix.shape == (2, 2, 2, P, 16)
    assert torch.equal(folded, unfolded.detach())


def test_prefix_encoder(roberta_dir):
    enc = from_pretrained(str(roberta_dir), dtype=torch.float32)
    method = R.build_method(R.MethodConfig(method="prefix", num_virtual_tokens=P), enc).eval()
    assert method.prefix.shape == (2, 2, 4, P, 16)  # no GQA: H = num_attention_heads, d_h = hidden / H
    with torch.no_grad():
        method.prefix.normal_()
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, 4:], mask[1, 4:] = 1, 0  # right padding with RoBERTa's pad id
    real = mask.bool()
    with torch.no_grad():
        base, out = enc(ids, mask), enc(ids, mask, method=method)
        assert (out - base)[real].abs().max() > 1e-2  # every token (the first too: bidirectional) sees the prefix
        assert ((out - base)[:, 0].abs().amax(-1) > 1e-3).all()
        other = ids.clone()
        other[1, 4:] = 77  # a different padded token: real tokens must not notice
        torch.testing.assert_close(enc(other, mask, method=method)[real], out[real], atol=1e-6, rtol=0)


# -----------------------------------------------------------------------------------------------------------------
# PEDRO


def pedro(model, pooling="last", layers=(0, 1), rank=4):
    return R.build_method(R.MethodConfig(method="pedro", layers=list(layers), rank=rank, pooling=pooling), model)


def randomise(method, std=0.3):
    """Nonzero up-projections (zero at init) so the vectors really depend on the prompt."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for gen in method.generators.values():
            gen[2].weight.copy_(std * torch.randn(gen[2].weight.shape, generator=g))
            gen[2].bias.copy_(std * torch.randn(gen[2].bias.shape, generator=g))
    return method


def test_rational_activation_closed_form():
    act = R.RationalActivation().double()
    a = torch.tensor([0.1, -0.7, 0.3, 0.25, -0.05, 0.02], dtype=torch.float64)
    b = torch.tensor([-0.4, 1.3, -0.2, 0.6], dtype=torch.float64)  # negative b: the |·| matters
    with torch.no_grad():
        act.numerator.copy_(a), act.denominator.copy_(b)
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    num = sum(a[k] * x ** k for k in range(6))
    den = 1 + sum((b[k - 1] * x ** k).abs() for k in range(1, 5))
    torch.testing.assert_close(act(x), num / den, atol=1e-12, rtol=0)
    x0 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    act(x0).sum().backward()
    assert x0.grad.isfinite().all() and torch.allclose(x0.grad, a[1].expand(3))  # σ'(0) = a₁
    init = R.RationalActivation()  # the leaky-ReLU fit, all coefficients nonzero (so all of them can train)
    t = torch.tensor([-2.0, -0.5, 0.5, 1.0, 2.5])
    torch.testing.assert_close(init(t), torch.nn.functional.leaky_relu(t, 0.01), atol=0.04, rtol=0)
    assert (init.denominator != 0).all()


def test_pedro_pooling():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1).expand(2, 5, 3)  # token t of row b holds 5b + t
    prompt_mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])  # row 0: left pad + 1 response token
    expected = {"last": [3.0, 6.0], "first": [1.0, 5.0], "mean": [2.0, 5.5]}
    for pooling, want in expected.items():
        g = R.PEDRO([0], 3, 3, 3, 3, 2, pooling).pool(x, prompt_mask)  # [B, d]
        assert g.tolist() == [[w] * 3 for w in want], pooling
    assert R.PEDRO([0], 3, 3, 3, 3, 2, "last").pool(x, None)[:, 0].tolist() == [4.0, 9.0]  # None: every token
    with pytest.raises(ValueError, match="pooling"):
        R.PEDRO([0], 3, 3, 3, 3, 2, "cls")


def test_pedro_identity_at_init_and_gradients(llama):
    method = pedro(llama)
    ids, mask = batch()
    llama.requires_grad_(False)
    with torch.no_grad():
        base = llama(ids, mask)
    out = llama(ids, mask, method=method)
    torch.testing.assert_close(out, base, atol=0, rtol=0)  # l = 1 + 0 exactly
    n = sum(p.numel() for p in method.parameters())
    assert n == 2 * ((64 * 4 + 4) + 10 + (4 * (64 + 32 + 128) + 64 + 32 + 128))  # down, rational, up per layer
    out[mask.bool()].logsumexp(-1).sum().backward()
    for gen in method.generators.values():  # only the zero-initialised up-projection can move first
        assert gen[2].weight.grad.abs().sum() > 0 and gen[2].bias.grad.abs().sum() > 0
    method.zero_grad()
    randomise(method)
    llama(ids, mask, method=method)[mask.bool()].logsumexp(-1).sum().backward()
    grads_nonzero(method)  # down-projection, rational coefficients, up-projection: all train


def test_pedro_constant_vectors_equal_peft_ia3(llama, hf_llama):
    """With W_up = 0, l = 1 + b_up for every prompt: exactly (IA)³ scaling of q_proj, v_proj, up_proj outputs."""
    method = pedro(llama)
    g = torch.Generator().manual_seed(9)
    ia3 = peft.get_peft_model(hf_llama, peft.IA3Config(target_modules=["q_proj", "v_proj", "up_proj"],
                                                       feedforward_modules=[])).eval()
    with torch.no_grad():
        for l in (0, 1):
            gen = method.generators[str(l)]
            gen[0].weight.normal_(generator=g)  # the pooled input still flows, but W_up = 0 ignores it
            gen[2].bias.copy_(0.5 * torch.randn(64 + 32 + 128, generator=g))
            lq, lv, lu = (1 + gen[2].bias).split([64, 32, 128])
            layer = ia3.base_model.model.model.layers[l]
            for module, vec in ((layer.self_attn.q_proj, lq), (layer.self_attn.v_proj, lv), (layer.mlp.up_proj, lu)):
                module.ia3_l["default"].copy_(vec[:, None])  # [out, 1]
    ids, mask = batch()
    real = mask.bool()
    with torch.no_grad():
        ours, base = llama(ids, mask, method=method), llama(ids, mask)
        theirs = ia3(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-4)
    assert (ours - base)[real].abs().max() > 1e-2


@pytest.mark.parametrize("pooling", ["last", "mean", "first"])
def test_pedro_vectors_depend_on_prompt_only(llama, pooling):
    method = randomise(pedro(llama, pooling))
    ids, mask = batch()
    response = torch.randint(3, 128, (2, 4), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        c1 = llama.new_cache(2, 16)
        llama(ids, mask, c1, method)  # prompt_mask defaults to the attention mask
        c2 = llama.new_cache(2, 16)
        llama(torch.cat([ids, response], 1), torch.cat([mask, torch.ones_like(response)], 1), c2, method,
              prompt_mask=torch.cat([mask, torch.zeros_like(response)], 1))
        other = ids.clone()
        other[1, :3] = 50  # different padding ids: padding is not prompt
        c3 = llama.new_cache(2, 16)
        llama(other, mask, c3, method)
        c4 = llama.new_cache(2, 16)  # a different prompt gives different vectors (the check can fail)
        llama(ids.roll(1, 1), mask, c4, method)
    assert sorted(c1.method_state) == [0, 1]
    for l in (0, 1):
        for s1, s2, s3, s4 in zip(c1.method_state[l], c2.method_state[l], c3.method_state[l], c4.method_state[l]):
            assert s1.shape[:2] == (2, 1)
            torch.testing.assert_close(s2, s1, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(s3, s1, atol=1e-6, rtol=1e-5)
            assert (s4 - s1).abs().max() > 1e-3


def test_pedro_cache_equals_recompute(llama):
    method = randomise(pedro(llama, layers=(0, 1)))
    ids, mask = batch()
    new = torch.randint(3, 128, (2, 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        cached, full = cached_vs_full(llama, method, ids, mask, new)
        base_cached, _ = cached_vs_full(llama, R.Method(), ids, mask, new)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    assert (cached - base_cached).abs().max() > 1e-2
    assert M.generate(llama, ids, mask, 8, method=method).tolist() == \
        M.generate(llama, ids, mask, 8, method=method, use_cache=False).tolist()


def test_pedro_encoder(roberta_dir):
    enc = from_pretrained(str(roberta_dir), dtype=torch.float32)
    method = pedro(enc, "last", layers=(1,))
    assert method.pooling == "first" and method.widths == (64, 64, 128)  # encoder: <s> token, no GQA, d_ff
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, 4:], mask[1, 4:] = 1, 0
    real = mask.bool()
    with torch.no_grad():
        base = enc(ids, mask)
        assert torch.equal(enc(ids, mask, method=method), base)
        mean = randomise(pedro(enc, "mean", layers=(1,)))
        out = enc(ids, mask, method=mean)
        assert (out - base)[real].abs().max() > 1e-2
        other = ids.clone()
        other[1, 4:] = 77  # padding is neither attended to nor pooled
        torch.testing.assert_close(enc(other, mask, method=mean)[real], out[real], atol=1e-6, rtol=0)


# -----------------------------------------------------------------------------------------------------------------
# Saving and loading


@pytest.mark.parametrize("cfg", [R.MethodConfig(method="prefix", num_virtual_tokens=P),
                                 R.MethodConfig(method="prefix", num_virtual_tokens=P, prefix_projection=True,
                                                prefix_hidden_size=32),
                                 R.MethodConfig(method="pedro", layers=[0, 1], rank=4, pooling="mean")],
                         ids=["prefix", "prefix-projection", "pedro"])
def test_save_load_round_trip(llama, tmp_path, cfg):
    torch.manual_seed(0)
    method = R.build_method(cfg, llama)
    if cfg.method == "pedro":
        randomise(method)
    ids, mask = batch()
    with torch.no_grad():
        before = llama(ids, mask, method=method)
    saving.save(str(tmp_path), method, cfg, llama)
    loaded, loaded_cfg, _ = saving.load(str(tmp_path), llama)
    with torch.no_grad():
        after = llama(ids, mask, method=loaded)
    assert torch.equal(after, before)
    if cfg.prefix_projection:  # saved as the materialised prefix (the MLP is dropped); the live method is untouched
        assert not loaded_cfg.prefix_projection and loaded.mlp is None and method.mlp is not None
    else:
        assert loaded_cfg == cfg and loaded.state_dict().keys() == method.state_dict().keys()
