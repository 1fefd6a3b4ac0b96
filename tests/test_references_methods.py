"""Reference-library comparisons of the parts `prefix`, `pedro` and `lora` that the assignment's case files
(teach/parts/prefix.py, pedro.py, lora.py) leave out, since students need not install transformers or PEFT. Tested on
the reference core. The rest is covered elsewhere: PEFT's prefix tuning (plain and reparametrized, left-padded) in
tests/test_prefix_pedro.py, PEDRO with constant scales = PEFT's (IA)³ there too, LoRA on LLaMA (q, k, v) and RoBERTa
against PEFT in tests/test_lora_peft.py."""
import tempfile

import pytest
import torch

import model as M
import reft
from support.checkpoints import from_pretrained

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

P = 3  # virtual tokens
CFG = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64)  # d_h = 16, GQA: 2 query heads per key/value head
L = 2


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _llama(seed=0):
    """A tiny random LLaMA (norm weights randomised too, so every weight matters)."""
    torch.manual_seed(seed)
    model = M.Llama(M.LlamaConfig(**CFG)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=_gen(seed + 1)))
    return model.requires_grad_(False)


def _hf_llama(model):
    """transformers' LlamaForCausalLM holding the same weights as our `model`."""
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG, rms_norm_eps=1e-6,
                                                                tie_word_embeddings=False)).eval()
    hf.load_state_dict({(k if k == "lm_head.weight" else "model." + k): v for k, v in model.state_dict().items()},
                       strict=True)
    return hf


@pytest.mark.parametrize("padded", [True, False], ids=["left-padded", "no-attention-mask"])
def test_prefix_real_tokens_rope_positions_start_at_P_as_transformers(padded):
    """transformers' LLaMA given the prefix as its past keys/values (never rotated), real tokens at RoPE positions
    P, P+1, ...: the same logits as our Llama with PrefixTuning, with left padding and with attention_mask=None
    (where the positions are an expanded view)."""
    model = _llama()
    method = reft.PrefixTuning(L, CFG["num_key_value_heads"], 16, P)
    with torch.no_grad():
        method.prefix.copy_(torch.randn(method.prefix.shape, generator=_gen(6)))
    hf = _hf_llama(model)
    ids = torch.randint(3, CFG["vocab_size"], (2, 7), generator=_gen(123))
    mask = torch.ones(2, 7, dtype=torch.long)
    ids[1, :2], mask[1, :2] = 0, 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    if not padded:
        ids, mask = ids[:, 2:], torch.ones_like(ids[:, 2:])
        pos = torch.arange(ids.shape[1])[None].expand(2, -1)
    real = mask.bool()

    def hf_logits(pos):
        past = transformers.DynamicCache([(method.prefix[l, 0].expand(2, -1, -1, -1).clone(),
                                           method.prefix[l, 1].expand(2, -1, -1, -1).clone()) for l in range(L)])
        return hf(input_ids=ids, attention_mask=torch.cat([torch.ones(2, P, dtype=torch.long), mask], 1),
                  cache=past, position_ids=pos).logits

    with torch.no_grad():
        ours = model(ids, mask if padded else None, method=method)
        want, base = hf_logits(pos + P), model(ids, mask if padded else None)
    assert (want - base)[real].abs().max() > 1e-2  # the prefix matters: the comparison is not vacuous
    torch.testing.assert_close(ours[real], want[real], atol=1e-4, rtol=1e-4)


def test_lora_matches_peft_bert():
    """LoRA on BERT's query/value (tests/test_lora_peft.py checks RoBERTa and LLaMA)."""
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4, intermediate_size=96,
                                                        max_position_embeddings=64)).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = from_pretrained(folder, dtype=torch.float32).eval()
    torch.manual_seed(1)
    method = reft.build_method(reft.MethodConfig(method="lora", layers=[0, 1], rank=4, lora_alpha=12.0,
                                                 lora_targets="q,v"), ours)
    with torch.no_grad():
        for b in method.B.values():
            b.copy_(0.3 * torch.randn(b.shape, generator=_gen(2)))
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=12.0, target_modules=["query", "value"],
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
        got, base = ours(ids, mask, method=method), ours(ids, mask)
        want = pm(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (got - base)[mask.bool()].abs().max() > 1e-2  # the update matters: the comparison is not vacuous
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=0)
