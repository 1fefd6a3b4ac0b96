"""Part `lora` (WALKTHROUGH.md §12): reft.LoRA.project, the LoRA baseline at seam 2 (the projections).

y = W x is a frozen projection's output (q, k or v); LoRA returns y + (α/r)·B A dropout(x), with A [r, in], B [out, r],
computed in fp32 and cast once to y's dtype. The reference is HF PEFT's LoRA on the same weights.

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import tempfile

import torch

import model as M
import reft
from support.checkpoints import from_pretrained

CFG = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)  # q_proj 64 -> 64, v_proj 64 -> 32 (GQA)
RANK, ALPHA = 4, 12.0  # α/r = 3: a missing or inverted scaling shows


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _llama(seed=0):
    torch.manual_seed(seed)
    return M.Llama(M.LlamaConfig(**CFG)).eval().requires_grad_(False)


def _lora(model, targets="q,v", alpha=ALPHA, dropout=0.0, seed=1):
    """Our LoRA on every layer with a random (nonzero) B, so the update shows."""
    torch.manual_seed(seed)
    cfg = reft.MethodConfig(method="lora", layers=list(range(CFG["num_hidden_layers"])), rank=RANK,
                            lora_alpha=alpha, lora_targets=targets, dropout=dropout)
    method = reft.build_method(cfg, model)
    with torch.no_grad():
        for b in method.B.values():
            b.copy_(0.3 * torch.randn(b.shape, generator=_gen(seed + 1)))
    return method


def _call(method, layer, name, x, y):
    """method.lora, with a shape error turned into the mistake it usually means."""
    try:
        return method.project(layer, name, x, y, None)
    except RuntimeError as e:
        if "shape" in str(e) or "size" in str(e) or "mat" in str(e):
            raise AssertionError(f"LoRA's update failed ({str(e).splitlines()[0]}): the update is x Aᵀ Bᵀ, "
                                 "A [r, in] acts first, then B [out, r]") from None
        raise


def _peft_llama(model, method, targets=("q_proj", "v_proj")):
    """transformers' LlamaForCausalLM with our weights, wrapped by PEFT's LoRA holding our A and B."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM
    hf = LlamaForCausalLM(LlamaConfig(**CFG, rms_norm_eps=1e-6, tie_word_embeddings=False)).eval()
    hf.load_state_dict({(k if k == "lm_head.weight" else "model." + k): v for k, v in model.state_dict().items()})
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(targets),
                                                 lora_dropout=0.0)).eval()
    with torch.no_grad():
        for l, layer in enumerate(pm.base_model.model.model.layers):
            for t in targets:
                lin = getattr(layer.self_attn, t)
                lin.lora_A["default"].weight.copy_(method.A[f"{l}_{t[0]}"])
                lin.lora_B["default"].weight.copy_(method.B[f"{l}_{t[0]}"])
    return pm


def test_lora_update_closed_form():
    method = _lora(_llama())
    x = torch.randn(2, 5, 64, generator=_gen(3))
    y = torch.randn(2, 5, 32, generator=_gen(4))
    out = _call(method, 1, "v", x, y)
    A, B = method.A["1_v"].detach(), method.B["1_v"].detach()
    assert out.shape == y.shape, f"LoRA must return y's shape {tuple(y.shape)}, got {tuple(out.shape)}"
    update = x @ A.T @ B.T  # [B, T, out]
    if torch.allclose(out, update * ALPHA / RANK, atol=1e-5):
        raise AssertionError("LoRA adds its update to the projection's output y: y + (α/r)·B A x, not the update "
                             "alone")
    for wrong, what in ((1.0, "not scaled at all"), (RANK / ALPHA, "scaled by r/α")):
        if torch.allclose(out, y + wrong * update, atol=1e-5):
            raise AssertionError(f"the update must be scaled by α/r (self.scaling); it is {what}")
    assert torch.allclose(out, y + ALPHA / RANK * update, atol=1e-5), \
        "LoRA must return y + (α/r)·x Aᵀ Bᵀ (A [r, in], B [out, r])"


def test_lora_leaves_other_projections_and_layers_alone():
    method = _lora(_llama(), targets="q")
    x, y = torch.randn(1, 3, 64, generator=_gen(5)), torch.randn(1, 3, 32, generator=_gen(6))
    assert _call(method, 0, "v", x, y) is y, "a projection LoRA does not target must come back unchanged"
    out = _call(method, 0, "q", x, torch.randn(1, 3, 64, generator=_gen(7)))
    assert out.shape == (1, 3, 64)


def test_lora_matches_peft_decoder():
    model = _llama()
    method = _lora(model)
    pm = _peft_llama(model, method)
    ids = torch.randint(3, CFG["vocab_size"], (2, 9), generator=_gen(8))
    with torch.no_grad():
        ours = model(ids, method=method)
        theirs = pm(input_ids=ids).logits
        base = model(ids)
    assert (ours - base).abs().max() > 1e-2, "the LoRA update must change the logits (B is not zero here)"
    err = float((ours - theirs).abs().max())
    assert err < 1e-5, f"LoRA on q_proj/v_proj differs from HF PEFT's LoRA by {err:.2e} (logits)"


def test_lora_matches_peft_encoder():
    import peft
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    hf = BertModel(BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=96, max_position_embeddings=64)).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = from_pretrained(folder, dtype=torch.float32).eval()
    method = _lora(ours)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["query", "value"],
                                                 lora_dropout=0.0)).eval()
    with torch.no_grad():
        for l, layer in enumerate(pm.base_model.model.encoder.layer):
            for t in ("query", "value"):
                lin = getattr(layer.attention.self, t)
                lin.lora_A["default"].weight.copy_(method.A[f"{l}_{t[0]}"])
                lin.lora_B["default"].weight.copy_(method.B[f"{l}_{t[0]}"])
        ids = torch.randint(3, 96, (2, 7), generator=_gen(9))
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0
        got = ours(ids, mask, method=method)
        want = pm(input_ids=ids, attention_mask=mask).last_hidden_state
    err = float((got - want)[mask.bool()].abs().max())
    assert err < 1e-5, f"LoRA on the encoder's query/value differs from HF PEFT's LoRA by {err:.2e}"


def test_lora_zero_B_is_the_base_model_and_trains():
    model = _llama()
    cfg = reft.MethodConfig(method="lora", layers=[0, 1], rank=RANK, lora_alpha=ALPHA)
    method = reft.build_method(cfg, model)  # B = 0 at init
    ids = torch.randint(3, CFG["vocab_size"], (2, 6), generator=_gen(10))
    out = model(ids, method=method)
    assert torch.equal(out, model(ids)), "with B = 0 (the init) LoRA must give exactly the base model's logits"
    out.float().pow(2).mean().backward()
    grads = {k: float(p.grad.abs().sum()) if p.grad is not None else 0.0 for k, p in method.named_parameters()}
    assert all(v > 0 for k, v in grads.items() if k.startswith("B.")), \
        f"B must get a gradient at init (it multiplies A x): {grads}"


def test_lora_dropout_acts_on_the_input():
    method = _lora(_llama(), dropout=0.5).train()
    x, y = torch.randn(2, 4, 64, generator=_gen(11)), torch.randn(2, 4, 32, generator=_gen(12))
    A, B = method.A["0_v"].detach(), method.B["0_v"].detach()
    torch.manual_seed(123)
    out = _call(method, 0, "v", x, y).detach()
    torch.manual_seed(123)
    want = y + ALPHA / RANK * (torch.nn.functional.dropout(x, 0.5) @ A.T @ B.T)
    assert not torch.allclose(out, y + ALPHA / RANK * (x @ A.T @ B.T), atol=1e-5), \
        "in training mode, LoRA's dropout must act (self.dropout on the input x)"
    assert torch.allclose(out, want, atol=1e-5), \
        "dropout must act on the input x of the update, (α/r)·B A dropout(x), not on its output"
    method.eval()
    assert torch.allclose(_call(method, 0, "v", x, y), y + ALPHA / RANK * (x @ A.T @ B.T), atol=1e-5), \
        "in eval mode LoRA must not drop anything"


def test_lora_computes_in_fp32_and_returns_y_dtype():
    method = _lora(_llama())
    x = (2 * torch.randn(2, 8, 64, generator=_gen(13))).bfloat16()
    y = (2 * torch.randn(2, 8, 64, generator=_gen(14))).bfloat16()
    out = _call(method, 1, "q", x, y)
    assert out.dtype == torch.bfloat16, f"LoRA must return y's dtype (bf16 here), got {out.dtype}"
    A, B = method.A["1_q"].detach(), method.B["1_q"].detach()
    want = (y.float() + ALPHA / RANK * (x.float() @ A.T @ B.T)).bfloat16()  # as PEFT: fp32 sum, cast once
    assert torch.equal(out, want), "LoRA must compute in fp32 (the method's dtype) and cast y + update once to y's dtype"
