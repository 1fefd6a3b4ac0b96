"""model.py against the reference implementation and real public checkpoints.

Tiny random models are built here with transformers, saved in the real Hugging Face formats into tmp folders,
loaded with our `from_pretrained`, and compared on CPU in fp32 (logits atol 1e-5, rtol 1e-4; greedy tokens equal).
Real weights: llama2.c's stories260K (upstream's own golden text, and an independent conversion to transformers)
and sentence-transformers/all-MiniLM-L6-v2. Every case runs in seconds.
"""
import io
import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import model as M
from model import Encoder, Llama, generate
from support.checkpoints import from_pretrained
from support import cli
from support import checkpoints
from conftest import use_fake_net

REPO = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1e-4
LLAMA = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, max_position_embeddings=64)
ENCODER = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=64)
PAD = 0  # padding id of the decoder tests (any id works: padded positions are masked)


# -----------------------------------------------------------------------------------------------------------------
# helpers


def close(actual, expected, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def hf():
    return pytest.importorskip("transformers", reason="transformers (the reference implementation) not installed")


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2):
    """Weights far from the default init: matrices N(0, std), vectors (norm weights, biases) spread around 1 / 0,
    so that a forgotten norm weight or bias, or a wrong rotary pairing, shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=g) - 0.25)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def hf_llama(seed=0, **overrides):
    t = hf()
    cfg = t.LlamaConfig(**{**LLAMA, **overrides})
    torch.manual_seed(seed)
    return randomize(t.LlamaForCausalLM(cfg), seed)


def tokens(*shape, seed=0, low=3, high=128):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def left_pad(prompts, pad=PAD):
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def right_pad(prompts, pad=PAD):
    T = max(len(p) for p in prompts)
    ids = torch.tensor([p + [pad] * (T - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (T - len(p)) for p in prompts])
    return ids, mask


def hf_greedy(model, ids, n, attention_mask=None):
    """transformers' greedy generate, new tokens only, never stopping at eos (ours runs with eos_id=None).
    transformers takes eos from model.generation_config even when the call passes eos_token_id=None."""
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None
    try:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=n,
                                 pad_token_id=PAD)
    finally:
        model.generation_config.eos_token_id = eos
    assert out.shape[1] == ids.shape[1] + n
    return out[:, ids.shape[1]:]


def edit_config(folder: Path, **changes):
    path = folder / "config.json"
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def safetensors_file(folder: Path):
    from safetensors.torch import load_file, save_file
    path = folder / "model.safetensors"
    return path, load_file(str(path)), save_file


# llama2.c's legacy .bin export, read and written with numpy (independent of model.py's reader).
L2C_ORDER = ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo", "ffn_norm",
             "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")  # run.c's memory_map_weights order


def numpy_read_llama2c(path):
    """-> (state dict in llama2.c's names, model_args) straight from the file layout of run.c."""
    dim, hidden, L, H, KV, V, S = (int(x) for x in np.fromfile(path, dtype=np.int32, count=7))
    vocab, hd = abs(V), dim // H
    flat = np.fromfile(path, dtype=np.float32, offset=28)
    off = 0

    def take(*shape):
        nonlocal off
        n = math.prod(shape)
        a = torch.from_numpy(flat[off:off + n].copy()).view(shape)
        off += n
        return a

    shapes = {"attention_norm": (dim,), "attention.wq": (dim, dim), "attention.wk": (KV * hd, dim),
              "attention.wv": (KV * hd, dim), "attention.wo": (dim, dim), "ffn_norm": (dim,),
              "feed_forward.w1": (hidden, dim), "feed_forward.w2": (dim, hidden), "feed_forward.w3": (hidden, dim)}
    sd = {"tok_embeddings.weight": take(vocab, dim)}
    for name in L2C_ORDER:
        stacked = take(L, *shapes[name])
        for i in range(L):
            sd[f"layers.{i}.{name}.weight"] = stacked[i]
    sd["norm.weight"] = take(dim)
    take(S * hd)  # legacy freq_cis_real and freq_cis_imag, unused
    sd["output.weight"] = sd["tok_embeddings.weight"] if V > 0 else take(vocab, dim)
    assert off == flat.size, "file size does not match its header"
    args = dict(dim=dim, n_layers=L, n_heads=H, n_kv_heads=KV, vocab_size=vocab, hidden_dim=hidden, multiple_of=32,
                norm_eps=1e-5, max_seq_len=S, dropout=0.0)
    return sd, args


def write_llama2c_bin(path, sd, args):
    a = args
    L, hd, shared = a["n_layers"], a["dim"] // a["n_heads"], sd["output.weight"] is sd["tok_embeddings.weight"]
    header = [a["dim"], a["hidden_dim"], L, a["n_heads"], a["n_kv_heads"], a["vocab_size"] * (1 if shared else -1),
              a["max_seq_len"]]
    parts = [sd["tok_embeddings.weight"]]
    for name in L2C_ORDER:
        parts += [sd[f"layers.{i}.{name}.weight"] for i in range(L)]
    parts += [sd["norm.weight"], torch.zeros(a["max_seq_len"] * hd)] + ([] if shared else [sd["output.weight"]])
    with open(path, "wb") as f:
        f.write(np.array(header, dtype=np.int32).tobytes())
        for p in parts:
            f.write(p.detach().numpy().astype(np.float32).tobytes())


def random_llama2c(shared=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=48, multiple_of=16, norm_eps=1e-5,
             max_seq_len=32, dropout=0.0)
    dim, kv = a["dim"], a["n_kv_heads"] * a["dim"] // a["n_heads"]
    shapes = {"attention.wq": (dim, dim), "attention.wk": (kv, dim), "attention.wv": (kv, dim),
              "attention.wo": (dim, dim), "feed_forward.w1": (a["hidden_dim"], dim),
              "feed_forward.w2": (dim, a["hidden_dim"]), "feed_forward.w3": (a["hidden_dim"], dim)}
    sd = {"tok_embeddings.weight": torch.randn(a["vocab_size"], dim, generator=g) * 0.3,
          "norm.weight": 1 + 0.2 * torch.randn(dim, generator=g)}
    for i in range(a["n_layers"]):
        for name, shape in shapes.items():
            sd[f"layers.{i}.{name}.weight"] = torch.randn(shape, generator=g) * 0.3
        for name in ("attention_norm", "ffn_norm"):
            sd[f"layers.{i}.{name}.weight"] = 1 + 0.2 * torch.randn(dim, generator=g)
    sd["output.weight"] = sd["tok_embeddings.weight"] if shared else torch.randn(a["vocab_size"], dim, generator=g)
    return sd, a


def hf_from_llama2c(sd, args):
    """Independent conversion llama2.c -> transformers' LlamaForCausalLM (as HF's convert_llama_weights does)."""
    t = hf()
    H, KV, dim = args["n_heads"], args["n_kv_heads"], args["dim"]
    shared = sd["output.weight"] is sd["tok_embeddings.weight"]
    cfg = t.LlamaConfig(vocab_size=args["vocab_size"], hidden_size=dim, intermediate_size=args["hidden_dim"],
                        num_hidden_layers=args["n_layers"], num_attention_heads=H, num_key_value_heads=KV,
                        max_position_embeddings=args["max_seq_len"], rms_norm_eps=args["norm_eps"],
                        tie_word_embeddings=shared)

    def permute(w, n_heads):  # interleaved rotary pairs (llama2.c) -> half-split pairs (HF)
        d_out, d_in = w.shape
        return w.view(n_heads, d_out // n_heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)

    new = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["output.weight"]}
    for i in range(args["n_layers"]):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        new[q + "self_attn.q_proj.weight"] = permute(sd[p + "attention.wq.weight"], H)
        new[q + "self_attn.k_proj.weight"] = permute(sd[p + "attention.wk.weight"], KV)
        new[q + "self_attn.v_proj.weight"] = sd[p + "attention.wv.weight"]
        new[q + "self_attn.o_proj.weight"] = sd[p + "attention.wo.weight"]
        new[q + "mlp.gate_proj.weight"] = sd[p + "feed_forward.w1.weight"]
        new[q + "mlp.down_proj.weight"] = sd[p + "feed_forward.w2.weight"]
        new[q + "mlp.up_proj.weight"] = sd[p + "feed_forward.w3.weight"]
        new[q + "input_layernorm.weight"] = sd[p + "attention_norm.weight"]
        new[q + "post_attention_layernorm.weight"] = sd[p + "ffn_norm.weight"]
    m = t.LlamaForCausalLM(cfg)
    m.load_state_dict({k: v.clone() for k, v in new.items()}, strict=True)
    return m.eval()


# -----------------------------------------------------------------------------------------------------------------
# LLaMA vs transformers


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def llama_pair(request, tmp_path_factory):
    """(transformers' LlamaForCausalLM with GQA, our Llama loaded from its save_pretrained folder)."""
    ref = hf_llama(seed=1, tie_word_embeddings=request.param)
    folder = tmp_path_factory.mktemp("llama")
    ref.save_pretrained(folder)
    return ref, from_pretrained(str(folder))


def test_llama_logits_match_transformers(llama_pair):
    ref, ours = llama_pair
    assert isinstance(ours, Llama) and ours.config.num_key_value_heads == 2
    tied = ref.config.tie_word_embeddings
    assert (ours.lm_head.weight is ours.embed_tokens.weight) == tied
    if not tied:  # the untied head was really loaded, not copied from the embedding
        assert not torch.equal(ours.lm_head.weight, ours.embed_tokens.weight)
    ids = tokens(2, 12)
    with torch.no_grad():
        close(ours(ids), ref(ids).logits)


def test_llama_greedy_generation_matches_transformers(llama_pair):
    ref, ours = llama_pair
    ids = tokens(1, 5, seed=2)
    got = generate(ours, ids, max_new_tokens=8)
    assert got.shape == (1, 8) and len(set(got[0].tolist())) > 2  # a model that repeats one token proves little
    assert got.tolist() == hf_greedy(ref, ids, 8).tolist()


def test_llama_left_padded_batch_equals_unpadded(llama_pair):
    ref, ours = llama_pair
    prompts = [tokens(7, seed=3).tolist(), tokens(4, seed=4).tolist()]
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        batch_logits = ours(ids, mask)
        for b, p in enumerate(prompts):
            alone = ours(torch.tensor([p]))
            close(batch_logits[b, -len(p):], alone[0])
            close(alone, ref(torch.tensor([p])).logits)
    batch_tokens = generate(ours, ids, mask, max_new_tokens=8)
    for b, p in enumerate(prompts):
        assert batch_tokens[b].tolist() == generate(ours, torch.tensor([p]), max_new_tokens=8)[0].tolist()
    assert batch_tokens.tolist() == hf_greedy(ref, ids, 8, attention_mask=mask).tolist()


def test_llama_right_padded_batch_equals_unpadded(llama_pair):
    ref, ours = llama_pair
    prompts = [tokens(3, seed=5).tolist(), tokens(9, seed=6).tolist()]
    ids, mask = right_pad(prompts)
    with torch.no_grad():
        batch_logits = ours(ids, mask)
        for b, p in enumerate(prompts):
            close(batch_logits[b, :len(p)], ref(torch.tensor([p])).logits[0])


# -----------------------------------------------------------------------------------------------------------------
# Rotary scaling and unsupported configs

ROPE_SCALINGS = {
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "linear": {"rope_type": "linear", "factor": 4.0},
}


@pytest.mark.parametrize("kind", list(ROPE_SCALINGS))
def test_llama_rope_scaling_matches_transformers(kind, tmp_path):
    ref = hf_llama(seed=7, rope_scaling=ROPE_SCALINGS[kind])  # transformers 5 stores it as config.rope_parameters
    ref.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path))
    assert ours.config.rope_scaling["rope_type"] == kind
    ids = tokens(2, 48, seed=8)  # long enough that scaled and unscaled frequencies give different logits
    plain = hf_llama(seed=7)
    with torch.no_grad():
        expected = ref(ids).logits
        close(ours(ids), expected)
        assert not torch.allclose(plain(ids).logits, expected, atol=1e-3)  # the scaling is really exercised


def test_llama3_frequencies_cover_all_three_bands():
    """With original_max_position_embeddings 32 and head_dim 16, some frequencies are kept, some divided by the
    factor and some interpolated: the logits test above then checks every branch of the llama3 formula."""
    cfg = M.LlamaConfig(**LLAMA, rope_scaling=ROPE_SCALINGS["llama3"])
    base = M.rope_inv_freq(M.LlamaConfig(**LLAMA))
    ratio = (base / M.rope_inv_freq(cfg)).tolist()
    assert any(abs(r - 1) < 1e-6 for r in ratio) and any(abs(r - 8) < 1e-4 for r in ratio)
    assert any(1.01 < r < 7.99 for r in ratio)


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}, "rope_scaling type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"sliding_window": 16}, "sliding_window=16 .* not supported"),  # max_position_embeddings 64
    ({"sliding_window": 16, "use_sliding_window": True}, "sliding_window=16 .* not supported"),
])
def test_llama_unsupported_config_is_a_clear_error(change, message, tmp_path):
    hf_llama().save_pretrained(tmp_path)
    edit_config(tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        from_pretrained(str(tmp_path))


@pytest.mark.parametrize("change", [
    {"sliding_window": None}, {"sliding_window": 16, "use_sliding_window": False}, {"sliding_window": 64},
    {"attention_dropout": 0.1, "pretraining_tp": 2},  # training-only dropout; a sliced matmul that sums the same
], ids=["null_window", "window_off", "window_covers_context", "dropout_and_tp"])
def test_llama_inactive_config_keys_load(change, tmp_path):
    ref = hf_llama(seed=35)
    ref.save_pretrained(tmp_path)
    edit_config(tmp_path, **change)
    ids = tokens(1, 8, seed=36)
    with torch.no_grad():
        close(from_pretrained(str(tmp_path))(ids), ref(ids).logits)


# -----------------------------------------------------------------------------------------------------------------
# Checkpoint formats


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "pytorch_bin"])
def test_llama_checkpoint_formats(fmt, tmp_path):
    ref = hf_llama(seed=9)
    if fmt == "pytorch_bin":  # transformers 5 always writes safetensors: write the legacy file ourselves
        ref.config.save_pretrained(tmp_path)
        torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        ref.save_pretrained(tmp_path, **({"max_shard_size": "40KB"} if fmt == "sharded" else {}))
    names = {p.name for p in tmp_path.iterdir()}
    assert ("model.safetensors" in names) == (fmt == "safetensors")
    assert ("model.safetensors.index.json" in names) == (fmt == "sharded")
    if fmt == "sharded":
        assert len({n for n in names if n.startswith("model-0")}) > 1
    ours = from_pretrained(str(tmp_path))
    ids = tokens(2, 10, seed=10)
    with torch.no_grad():
        close(ours(ids), ref(ids).logits)


def test_bf16_checkpoint_keeps_its_dtype_unless_asked(tmp_path):
    ref = hf_llama(seed=11).to(torch.bfloat16)
    ref.save_pretrained(tmp_path)
    ours = from_pretrained(str(tmp_path))
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    w = ref.model.layers[1].self_attn.k_proj.weight
    assert torch.equal(ours.layers[1].self_attn.k_proj.weight, w)
    ids = tokens(1, 6, seed=12)
    with torch.no_grad():
        assert ours(ids).dtype == torch.bfloat16
        ours32 = from_pretrained(str(tmp_path), dtype=torch.float32)
        assert {p.dtype for p in ours32.parameters()} == {torch.float32}
        assert torch.equal(ours32.layers[1].self_attn.k_proj.weight, w.float())  # widened exactly
        # transformers' own fp32 load of the same folder (ref.float() would keep its bf16-rounded rotary buffer)
        ref32 = hf().LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
        close(ours32(ids), ref32(ids).logits)


def test_fp16_checkpoint_keeps_its_dtype(tmp_path):
    ref = hf_llama(seed=37)
    ref.half().save_pretrained(tmp_path)
    ref.float()  # the fp32 reference: weights rounded to fp16 and widened back
    ours = from_pretrained(str(tmp_path))
    assert {p.dtype for p in ours.parameters()} == {torch.float16}
    assert torch.equal(ours.layers[1].mlp.up_proj.weight, ref.model.layers[1].mlp.up_proj.weight.half())
    ids = tokens(1, 12, seed=38)
    with torch.no_grad():
        got, expected = ours(ids), ref(ids).logits
    assert got.dtype == torch.float16
    close(got.float(), expected, atol=0.05, rtol=0.02)  # fp16 activations: about 3 decimal digits


# -----------------------------------------------------------------------------------------------------------------
# Generation: the KV cache against recomputation


@pytest.fixture(scope="module")
def llama():
    """Our Llama with random weights (no checkpoint round trip needed for self-consistency tests)."""
    torch.manual_seed(0)
    return randomize(Llama(M.LlamaConfig(**LLAMA)), seed=13)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (0.8, 0.9)], ids=["greedy", "t1", "t0.8p0.9"])
def test_cached_generation_equals_recomputation(llama, padded, temperature, top_p):
    if padded:
        ids, mask = left_pad([tokens(6, seed=14).tolist(), tokens(2, seed=15).tolist(), tokens(4, seed=16).tolist()])
    else:
        ids, mask = tokens(3, 5, seed=17), None
    runs = {}
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(123)
        runs[use_cache] = generate(llama, ids, mask, max_new_tokens=10, temperature=temperature, top_p=top_p,
                                   use_cache=use_cache, generator=g)
    assert runs[True].shape == (3, 10)
    assert runs[True].tolist() == runs[False].tolist()
    if temperature > 0:  # sampling really sampled (with these seeds it leaves the greedy path)
        assert runs[True].tolist() != generate(llama, ids, mask, max_new_tokens=10).tolist()


def test_chunked_prefill_with_cache_equals_one_forward(llama):
    ids = tokens(2, 11, seed=18)
    with torch.no_grad():
        full = llama(ids)
        cache = llama.new_cache(2, 16)
        parts = [llama(ids[:, :4], cache=cache), llama(ids[:, 4:10], cache=cache), llama(ids[:, 10:], cache=cache)]
    assert cache.length == 11
    close(torch.cat(parts, 1), full)


def test_generation_stops_at_eos(llama):
    ids = tokens(2, 5, seed=19)
    free = generate(llama, ids, max_new_tokens=10)
    eos = int(free[0, 3])
    first = [row.index(eos) if eos in row else None for row in free.tolist()]
    got = generate(llama, ids, max_new_tokens=10, eos_id=eos)
    stop = max(10 if f is None else f + 1 for f in first)  # generation ends once every row has produced eos
    assert got.shape == (2, stop)
    for row, f, full_row in zip(got.tolist(), first, free.tolist()):
        if f is None:
            assert row == full_row[:stop]
        else:  # a finished row is filled with eos
            assert row[:f + 1] == full_row[:f + 1] and set(row[f:]) == {eos}


def test_sample_next_greedy_temperature_and_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().expand(4000, 4)
    assert M.sample_next(logits).tolist() == [0] * 4000  # temperature 0: argmax
    g = torch.Generator().manual_seed(0)
    for top_p, nucleus in ((0.7, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})):
        drawn = M.sample_next(logits, temperature=1.0, top_p=top_p, generator=g)
        assert set(drawn.tolist()) == nucleus  # the smallest set with mass >= top_p, each member drawn
    counts = torch.bincount(M.sample_next(logits, temperature=1.0, generator=g), minlength=4) / 4000
    close(counts, probs[0], atol=0.03, rtol=0)  # temperature 1 samples the model's distribution
    hot = torch.bincount(M.sample_next(logits, temperature=3.0, generator=g), minlength=4) / 4000
    assert hot[3] > 2 * counts[3]  # a higher temperature flattens it


# -----------------------------------------------------------------------------------------------------------------
# BERT / RoBERTa vs transformers


def hf_encoder(arch, classification=False, seed=0):
    t = hf()
    if arch == "roberta":
        cfg = t.RobertaConfig(**ENCODER, type_vocab_size=1, pad_token_id=1, num_labels=3)
        cls = t.RobertaForSequenceClassification if classification else t.RobertaModel
    else:
        cfg = t.BertConfig(**ENCODER, type_vocab_size=2, pad_token_id=0, num_labels=3)
        cls = t.BertForSequenceClassification if classification else t.BertModel
    torch.manual_seed(seed)
    return randomize(cls(cfg), seed, std=0.1)


def encoder_batch(arch, side="right"):
    """A padded batch: real ids avoid the special ids 0..3 (RoBERTa pads with 1, BERT with 0)."""
    pad = 1 if arch == "roberta" else 0
    prompts = [tokens(10, seed=20, low=4).tolist(), tokens(6, seed=21, low=4).tolist(), tokens(3, seed=22, low=4).tolist()]
    ids, mask = (right_pad if side == "right" else left_pad)(prompts, pad=pad)
    token_types = None
    if arch == "bert":  # a sentence pair: the second half of each real sequence is segment 1
        token_types = torch.zeros_like(ids)
        for b, n in enumerate(mask.sum(1).tolist()):
            real = mask[b].nonzero()[:, 0]
            token_types[b, real[n // 2:]] = 1
    return ids, mask, token_types


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ["roberta", "bert"])
def test_encoder_hidden_states_match_transformers(arch, side, tmp_path):
    """Right padding is the usual case; left padding checks that RoBERTa numbers positions from the first real
    token, as transformers does (BERT numbers every slot, padding included, in both)."""
    ref = hf_encoder(arch, seed=23)
    ref.save_pretrained(tmp_path)
    enc = from_pretrained(str(tmp_path))
    assert isinstance(enc, Encoder) and enc.config.model_type == arch and not enc.training
    ids, mask, types = encoder_batch(arch, side)
    with torch.no_grad():
        ours = enc(ids, mask, types)
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    real = mask.bool()
    close(ours[real], expected[real])
    if arch == "bert":  # the segment embeddings matter: all-zero token types give other states
        with torch.no_grad():
            assert not torch.allclose(enc(ids, mask)[real], expected[real], atol=1e-3)


@pytest.mark.parametrize("arch", ["roberta", "bert"])
def test_encoder_classifier_matches_transformers(arch, tmp_path):
    ref = hf_encoder(arch, classification=True, seed=24)
    ref.save_pretrained(tmp_path)
    enc = from_pretrained(str(tmp_path))
    assert enc.classifier is not None and enc.classifier.out_proj.out_features == 3
    ids, mask, types = encoder_batch(arch)
    with torch.no_grad():
        got = enc.classify(enc(ids, mask, types))
        close(got, ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits)


def test_minilm_real_weights_match_transformers(minilm_dir):
    t = hf()
    tok = t.BertTokenizer(str(minilm_dir / "vocab.txt"))  # positional: the vocab file in transformers 4 and 5
    sentences = ["The cat sat on the mat.", "Representation fine-tuning edits hidden states, not weights!",
                 "Hello world", "A much longer sentence about how small encoders still carry quite a lot of meaning."]
    batch = tok(sentences, padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == 101 and (batch["attention_mask"] == 0).any()  # [CLS], and padded
    ref = t.BertModel.from_pretrained(str(minilm_dir)).eval()
    enc = from_pretrained(str(minilm_dir))
    assert enc.config.hidden_size == 384 and len(enc.layers) == 6
    with torch.no_grad():
        expected = ref(**batch).last_hidden_state
        ours = enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    close(ours[real], expected[real], atol=1e-4, rtol=1e-4)


# -----------------------------------------------------------------------------------------------------------------
# llama2.c: stories260K golden output, an independent conversion to transformers, the .pt training checkpoint

# karpathy/llama2.c test_all.py: run.c and sample.py, greedy for 200 steps from BOS, must print exactly this.
STORIES260K_GREEDY_200 = (
    'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw '
    'a big, red ball. She wanted to play with it, but it was too high.\nLily\'s mom said, "Lily, let\'s go to the '
    'park." Lily was sad and didn\'t know what to do. She said, "I want to play with your ball, but I can\'t find '
    'it."\nLily was sad and didn\'t know what to do. She said, "I\'m sorry, Lily. I didn\'t know what to do."\nLily '
    'didn\'t want to help her mom, so she')
STORIES260K_GREEDY_40 = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
                         "park. One day, she saw a big, r")  # observed here; a prefix of upstream's text


@pytest.fixture(scope="module")
def sp(stories260k):
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(stories260k / "tok512.model"))


@pytest.fixture(scope="module")
def stories(stories260k):
    return from_pretrained(str(stories260k / "stories260K.bin"))


def test_stories260k_greedy_golden(stories, sp):
    assert stories.config.tie_word_embeddings and stories.config.num_key_value_heads == 4
    bos = torch.tensor([[1]])
    out = generate(stories, bos, max_new_tokens=40)
    assert sp.decode(out[0].tolist()) == STORIES260K_GREEDY_40
    out = generate(stories, bos, max_new_tokens=200)
    assert sp.decode(out[0].tolist()) == STORIES260K_GREEDY_200


def test_stories260k_matches_independent_transformers_conversion(stories, stories260k, sp):
    sd, args = numpy_read_llama2c(stories260k / "stories260K.bin")
    ref = hf_from_llama2c(sd, args)
    ids = torch.tensor([sp.encode("Once upon a time, a little dog found a red ball in the park.", add_bos=True)])
    with torch.no_grad():
        close(stories(ids), ref(ids).logits)


@pytest.mark.parametrize("shared", [True, False], ids=["shared_classifier", "own_classifier"])
def test_llama2c_bin_matches_transformers_on_random_weights(shared, tmp_path):
    """The .bin reader on a file written here, untied head (negative vocab_size in the header) included."""
    sd, args = random_llama2c(shared, seed=25)
    write_llama2c_bin(tmp_path / "m.bin", sd, args)
    ours = from_pretrained(str(tmp_path / "m.bin"))
    assert ours.config.tie_word_embeddings == shared
    ids = tokens(2, 9, seed=26, high=64)
    with torch.no_grad():
        close(ours(ids), hf_from_llama2c(*numpy_read_llama2c(tmp_path / "m.bin"))(ids).logits)


@pytest.mark.parametrize("prefix", ["", "_orig_mod."], ids=["plain", "torch_compiled"])
def test_llama2c_pt_checkpoint_equals_bin(prefix, stories, stories260k, tmp_path):
    sd, args = numpy_read_llama2c(stories260k / "stories260K.bin")
    assert sd["output.weight"] is sd["tok_embeddings.weight"]  # tied, as llama2.c's train.py saves it
    torch.save({"model": {prefix + k: v for k, v in sd.items()}, "model_args": args, "iter_num": 0},
               tmp_path / "ckpt.pt")
    ours = from_pretrained(str(tmp_path / "ckpt.pt"))
    assert ours.config.tie_word_embeddings
    ids = tokens(2, 16, seed=27, high=512)
    with torch.no_grad():
        close(ours(ids), stories(ids))


# -----------------------------------------------------------------------------------------------------------------
# Bad input: each a clear error naming what is wrong


@pytest.fixture()
def llama_folder(tmp_path):
    hf_llama(seed=28).save_pretrained(tmp_path)
    return tmp_path


def test_nonexistent_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        from_pretrained(str(tmp_path / "nowhere" / "model.bin"))


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="expected config.json"):
        from_pretrained(str(tmp_path))


def test_config_without_weights(llama_folder):
    (llama_folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in"):
        from_pretrained(str(llama_folder))


def test_missing_tensor_is_named(llama_folder):
    path, state, save = safetensors_file(llama_folder)
    del state["model.layers.1.mlp.up_proj.weight"]
    save(state, str(path))
    with pytest.raises(ValueError, match=r"missing 1 tensor.*layers\.1\.mlp\.up_proj\.weight"):
        from_pretrained(str(llama_folder))


def test_unexpected_tensor_is_named(llama_folder):
    path, state, save = safetensors_file(llama_folder)
    state["model.layers.0.extra.weight"] = torch.zeros(3)
    save(state, str(path))
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.0\.extra\.weight'"):
        from_pretrained(str(llama_folder))


def test_shape_mismatch_is_named(llama_folder):
    path, state, save = safetensors_file(llama_folder)
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)  # 2 kv heads need (32, 64)
    save(state, str(path))
    with pytest.raises(ValueError, match=r"shape mismatch for 'model\.layers\.0\.self_attn\.k_proj\.weight'"):
        from_pretrained(str(llama_folder))


@pytest.mark.parametrize("cut", [4, 3, 1000], ids=["one_float", "partial_float", "many_floats"])
def test_truncated_llama2c_bin(cut, tmp_path):
    sd, args = random_llama2c(seed=29)
    write_llama2c_bin(tmp_path / "m.bin", sd, args)
    from_pretrained(str(tmp_path / "m.bin"))  # the whole file loads
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "m.bin").write_bytes(data[:-cut])
    with pytest.raises(ValueError, match="truncated"):
        from_pretrained(str(tmp_path / "m.bin"))


@pytest.mark.parametrize("name, content", [
    ("notes.bin", b"These are some notes, not a checkpoint. " * 30),
    ("tiny.bin", b"hi"),
    ("ckpt.pt", b"not a zip file at all, nor a pickle " * 10),
    ("model.safetensors", b"\xff" * 64),
], ids=["text_as_bin", "tiny_file", "text_as_pt", "garbage_safetensors"])
def test_non_checkpoint_file(name, content, tmp_path):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match="not a|too small"):
        from_pretrained(str(tmp_path / name))


@pytest.mark.parametrize("name, content, message", [
    ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", "not a safetensors file"),
    ("pytorch_model.bin", b"not a zip file at all, nor a pickle " * 10, "pytorch_model.bin: not a PyTorch file"),
], ids=["safetensors", "pytorch_bin"])
def test_garbage_weights_in_folder(name, content, message, llama_folder):
    (llama_folder / "model.safetensors").unlink()
    (llama_folder / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        from_pretrained(str(llama_folder))


def test_missing_shard_is_named(tmp_path):
    hf_llama(seed=39).save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("model-0*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=f"lists shard '{shards[1].name}', which is not in"):
        from_pretrained(str(tmp_path))


def test_llama2c_pt_without_its_keys(tmp_path):
    sd, args = random_llama2c(seed=40)
    torch.save({"state_dict": sd, "config": args}, tmp_path / "ckpt.pt")  # a .pt, but not llama2.c's layout
    with pytest.raises(ValueError, match="not a llama2.c training checkpoint .*'model' and 'model_args'"):
        from_pretrained(str(tmp_path / "ckpt.pt"))


def test_unsupported_model_type(llama_folder):
    edit_config(llama_folder, model_type="gpt2")
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        from_pretrained(str(llama_folder))


def test_token_id_out_of_range(llama):
    with pytest.raises(ValueError, match="token id 128 is out of range for a vocabulary of 128"):
        llama(torch.tensor([[5, 128]]))
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        llama(torch.tensor([[-1, 5]]))


def test_attention_mask_shape_is_checked(llama):
    ids = tokens(2, 5, seed=41)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\), expected \(2, 5\)"):
        llama(ids, torch.ones(2, 4, dtype=torch.long))
    cache = llama.new_cache(2, 8)
    llama(ids, torch.ones(2, 5, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"expected \(2, 6\) \(batch, past \+ current"):  # the past counts
        llama(ids[:, :1], torch.ones(2, 1, dtype=torch.long), cache)


def test_prompt_longer_than_context(llama):
    too_long = tokens(1, 65, seed=30)  # max_position_embeddings 64
    with pytest.raises(ValueError, match="longer than the model's context"):
        llama(too_long)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(llama, too_long[:, :60], max_new_tokens=5)
    llama(too_long[:, :64])  # exactly the context is fine
    generate(llama, too_long[:, :60], max_new_tokens=4)


def test_encoder_bad_input(tmp_path):
    hf_encoder("roberta", seed=31).save_pretrained(tmp_path)
    enc = from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="token id 200 is out of range"):
        enc(torch.tensor([[0, 200, 2]]))
    with pytest.raises(ValueError, match="longer than the model's context"):
        enc(tokens(1, 63, low=4))  # RoBERTa: 64 positions minus the 2 offset by pad_token_id
    with pytest.raises(ValueError, match="no classification head"):
        enc.classify(enc(tokens(1, 5, low=4)))


@pytest.mark.parametrize("change, message", [
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key' is not supported"),
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
])
def test_encoder_unsupported_config_is_a_clear_error(change, message, tmp_path):
    hf_encoder("bert", seed=42).save_pretrained(tmp_path)
    from_pretrained(str(tmp_path))  # loads as saved
    edit_config(tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        from_pretrained(str(tmp_path))


# -----------------------------------------------------------------------------------------------------------------
# Command line and downloads


def run_cli(*args):
    """python model.py ARGS in a subprocess, on the CPU."""
    return subprocess.run([sys.executable, str(REPO / "model.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})


def test_cli_continues_a_prompt(stories260k, stories, sp):
    prompt = "Once upon a time"
    r = run_cli(str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
                "--prompt", prompt, "--max-new-tokens", "20")
    assert r.returncode == 0, r.stderr
    ids = sp.encode(prompt, add_bos=True)
    new = generate(stories, torch.tensor([ids]), max_new_tokens=20)[0].tolist()
    assert r.stdout.startswith(prompt)
    assert r.stdout.rstrip("\n") == sp.decode(ids + new)


def main_out(capsys, *args):
    """model.main(args) in this process (on CPU) -> what it printed."""
    cli.model_main([*args, "--device", "cpu"])
    return capsys.readouterr().out


def test_cli_empty_prompt_starts_from_bos(stories260k, capsys):
    out = main_out(capsys, str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
                   "--max-new-tokens", "40")
    assert out == STORIES260K_GREEDY_40 + "\n"  # llama2.c's own greedy text from BOS


def test_cli_sampling_is_seeded(stories260k, capsys):
    args = (str(stories260k / "stories260K.bin"), "--tokenizer", str(stories260k / "tok512.model"),
            "--prompt", "Once upon a time", "--max-new-tokens", "30")
    sample = ("--temperature", "0.8", "--top-p", "0.9")
    first, second = (main_out(capsys, *args, *sample, "--seed", "1") for _ in range(2))
    assert first.startswith("Once upon a time") and len(first) > len("Once upon a time") + 40
    assert first == second  # the same seed, the same text
    assert first != main_out(capsys, *args)  # it sampled: not the greedy text
    assert first != main_out(capsys, *args, *sample, "--seed", "2")


def test_cli_encoder_checkpoint_is_one_line_error(tmp_path, capsys):
    hf_encoder("bert", seed=43).save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as e:
        main_out(capsys, str(tmp_path), "--prompt", "hi")
    assert str(e.value.code) == f"error: {tmp_path} is an encoder (bert); it cannot generate text"


def test_cli_bad_checkpoint_is_one_line_error(tmp_path):
    r = run_cli(str(tmp_path / "missing.bin"), "--prompt", "hi", "--max-new-tokens", "2")
    assert r.returncode != 0
    assert r.stderr.startswith("error: ") and "missing.bin" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(checkpoints, "CACHE_DIR", str(tmp_path))
    use_fake_net(monkeypatch, offline)
    with pytest.raises(ConnectionError, match=r"offline.*local path"):
        checkpoints.resolve("stories15M")
    assert list(tmp_path.iterdir()) == []  # no partial file, no empty folder left behind


def no_network(url, *args, **kwargs):
    pytest.fail(f"unexpected download of {url}")


def response(data: bytes, length=None):
    """What urlopen returns, enough for `download`: read(n) and a Content-Length header."""
    r = io.BytesIO(data)
    r.headers = {"Content-Length": str(len(data) if length is None else length)}
    return r


def fake_hub(folder: Path, repo: str):
    """An urlopen that serves folder's files as the Hub's https://huggingface.co/{repo}/resolve/main/<name> URLs,
    and answers HTTP 404 to any other file, as the Hub does."""
    base = f"https://huggingface.co/{repo}/resolve/main/"

    def urlopen(url, timeout=None):
        if url.startswith(base) and (folder / url[len(base):]).is_file():
            return response((folder / url[len(base):]).read_bytes())
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
    return urlopen


@pytest.mark.parametrize("name", ["runs/model.bin", "ckpts/last.pt", "out/model.safetensors", ".cache/model"])
def test_missing_local_path_is_not_downloaded(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoints, "CACHE_DIR", str(tmp_path / "cache"))
    use_fake_net(monkeypatch, no_network)
    with pytest.raises(FileNotFoundError, match=f"^{name}: no such file or folder"):
        from_pretrained(name)
    assert list(tmp_path.iterdir()) == []  # no cache folder made


def test_repo_id_download_with_shards_then_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    hf_llama(seed=44).save_pretrained(hub, max_shard_size="40KB")
    shards = {p.name for p in hub.glob("model-0*.safetensors")}
    assert len(shards) > 1 and (hub / "model.safetensors.index.json").exists()
    monkeypatch.setattr(checkpoints, "CACHE_DIR", str(tmp_path / "cache"))
    use_fake_net(monkeypatch, fake_hub(hub, "meta-llama/Llama-3.2-1B"))
    ours = from_pretrained("meta-llama/Llama-3.2-1B")
    cached = tmp_path / "cache" / "meta-llama--Llama-3.2-1B"
    assert list((tmp_path / "cache").iterdir()) == [cached]  # complete: the .part folder was renamed
    assert {p.name for p in cached.iterdir()} == {"config.json", "model.safetensors.index.json",
                                                  "generation_config.json"} | shards  # what the hub folder has
    use_fake_net(monkeypatch, no_network)
    again = from_pretrained("meta-llama/Llama-3.2-1B")  # the cached folder, no network
    ids = tokens(2, 10, seed=45)
    with torch.no_grad():
        expected = from_pretrained(str(hub))(ids)
        close(ours(ids), expected)
        close(again(ids), expected)


def test_unknown_repo_is_a_clear_error(tmp_path, monkeypatch):
    asked = []

    def urlopen(url, timeout=None):  # the Hub answers 401 for a repo that does not exist
        asked.append(url)
        raise urllib.error.HTTPError(url, 401, "Unauthorized", {}, None)

    monkeypatch.setattr(checkpoints, "CACHE_DIR", str(tmp_path / "cache"))
    use_fake_net(monkeypatch, urlopen)
    with pytest.raises(FileNotFoundError, match="^karpathy/tinyllamas: no such local file or folder, nor a public"):
        from_pretrained("karpathy/tinyllamas")
    assert asked == ["https://huggingface.co/karpathy/tinyllamas/resolve/main/config.json"]  # taken for a repo id
    assert list(tmp_path.iterdir()) == []


class ResetAfterFirstChunk(io.BytesIO):
    headers = {"Content-Length": "100"}

    def read(self, n=-1):
        if self.tell():
            raise ConnectionResetError("Connection reset by peer")
        return super().read(4)


@pytest.mark.parametrize("make, message", [
    (lambda: ResetAfterFirstChunk(b"some bytes"), "Connection reset by peer"),
    (lambda: response(b"half", length=8), r"connection closed after 4 of 8 bytes"),  # http.client raises nothing
], ids=["reset", "cut_short"])
def test_broken_download_leaves_no_part_file(make, message, tmp_path, monkeypatch):
    dest = tmp_path / "cache" / "m.bin"
    use_fake_net(monkeypatch, lambda url, timeout=None: make())
    with pytest.raises(ConnectionError, match=f"cannot download https://x.org/m.bin \\({message}\\)"):
        checkpoints.download("https://x.org/m.bin", str(dest))
    assert not dest.parent.exists()  # no dest, no temporary file, no empty folder
    dest.parent.mkdir()
    dest.write_bytes(b"cached")
    use_fake_net(monkeypatch, no_network)
    assert checkpoints.download("https://x.org/m.bin", str(dest)) == str(dest)  # an existing file is a cache hit
