"""The LoRA baseline (reft.LoRA, seam 2) beyond its assignment part (teach/parts/lora.py: the update against stored expected outputs,
PEFT parity on LLaMA and BERT, B = 0 is the base, dropout, dtypes): RoBERTa and the k projection against PEFT,
cached == uncached generation, the base weights untouched by training, saving, and the bad-input errors."""
import pytest
import torch

import model as M
import reft
from support import saving
from support.checkpoints import from_pretrained

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

LLAMA = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, max_position_embeddings=64)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(path)
    return path


def lora(model, targets="q,v", rank=4, alpha=8.0, layers=(0, 1), seed=0):
    """A LoRA with a random B (nonzero update)."""
    torch.manual_seed(seed)
    method = reft.build_method(reft.MethodConfig(method="lora", layers=list(layers), rank=rank, lora_alpha=alpha,
                                                 lora_targets=targets), model)
    with torch.no_grad():
        for b in method.B.values():
            b.normal_(0, 0.2)
    return method


def copy_into_peft(method, pm, layers, names):
    """Our A, B -> PEFT's lora_A/lora_B; names: {our projection letter: the module's name}; layers: HF layer list."""
    with torch.no_grad():
        for l, layer in enumerate(layers):
            for t, name in names.items():
                attn = layer.self_attn if hasattr(layer, "self_attn") else layer.attention.self
                lin = getattr(attn, name)
                lin.lora_A["default"].weight.copy_(method.A[f"{l}_{t}"])
                lin.lora_B["default"].weight.copy_(method.B[f"{l}_{t}"])


def test_lora_q_k_v_matches_peft_decoder(llama_dir):
    ours = from_pretrained(str(llama_dir), dtype=torch.float32)
    method = lora(ours, targets="q,k,v", rank=2, alpha=5.0)
    hf = transformers.LlamaForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=5.0, target_modules=["q_proj", "k_proj", "v_proj"],
                                                 lora_dropout=0.0)).eval()
    copy_into_peft(method, pm, pm.base_model.model.model.layers, {"q": "q_proj", "k": "k_proj", "v": "v_proj"})
    assert sum(p.numel() for p in method.parameters()) == sum(p.numel() for p in pm.parameters() if p.requires_grad)
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        got, want = ours(ids, mask, method=method), pm(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=2e-5, rtol=0)
    assert (got - ours(ids, mask)).abs().max() > 1e-2  # not vacuous


def test_lora_matches_peft_roberta(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, pad_token_id=1)
    hf = transformers.RobertaModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    method = lora(ours)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8.0, target_modules=["query", "value"],
                                                 lora_dropout=0.0)).eval()
    copy_into_peft(method, pm, pm.base_model.model.encoder.layer, {"q": "query", "v": "value"})
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(2))
    ids[1, 5:] = 1  # RoBERTa pads with pad_token_id
    mask = (ids != 1).long()
    with torch.no_grad():
        got = ours(ids, mask, method=method)
        want = pm(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=2e-5, rtol=0)


def test_lora_cached_generation_equals_recompute(llama_dir):
    model = from_pretrained(str(llama_dir), dtype=torch.float32)
    method = lora(model, alpha=32.0)  # a large update: the tokens differ from the base model's
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    cached = M.generate(model, ids, mask, 12, method=method)
    full = M.generate(model, ids, mask, 12, method=method, use_cache=False)
    assert torch.equal(cached, full)
    assert not torch.equal(cached, M.generate(model, ids, mask, 12))  # LoRA changes the text


def test_training_leaves_the_base_weights_untouched(llama_dir):
    model = from_pretrained(str(llama_dir), dtype=torch.float32).requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = reft.build_method(reft.MethodConfig(method="lora", layers=[0, 1], rank=4), model)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-2)
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        model(ids, method=method).logsumexp(-1).mean().backward()
        opt.step(), opt.zero_grad()
    assert all(float(b.detach().abs().sum()) > 0 for b in method.B.values())  # B left zero: the parameters train
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # never merged into W


def test_lora_save_load_round_trip(llama_dir, tmp_path):
    model = from_pretrained(str(llama_dir), dtype=torch.float32)
    cfg = reft.MethodConfig(method="lora", layers=[1], rank=3, lora_alpha=6.0, lora_targets="v")
    method = reft.build_method(cfg, model)
    with torch.no_grad():
        method.B["1_v"].normal_()
    saving.save(str(tmp_path), method, cfg, model)
    loaded, lcfg, _ = saving.load(str(tmp_path), model)
    assert lcfg == cfg and list(loaded.state_dict()) == ["A.1_v", "B.1_v"]
    ids = torch.randint(3, 128, (1, 5))
    assert torch.equal(model(ids, method=loaded), model(ids, method=method))


@pytest.mark.parametrize("kw,message", [
    ({"lora_targets": "q,o"}, "bad lora_targets 'q,o': expected some of q,k,v"),
    ({"rank": 0}, "rank must be positive"),
])
def test_lora_bad_config(llama_dir, kw, message):
    model = from_pretrained(str(llama_dir), dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        reft.build_method(reft.MethodConfig(**{"method": "lora", "layers": [0], **kw}), model)
