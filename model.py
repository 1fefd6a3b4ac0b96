"""
model.py: a LLaMA-style decoder and a BERT/RoBERTa-style encoder in plain PyTorch.

Both load public weights (Hugging Face folders, llama2.c checkpoints) with `from_pretrained` and match the
reference implementation (transformers) numerically; tests/test_model.py proves it.

The methods of reft.py act at three explicit call sites, marked "seam" below (grep for it):
  seam 1, residual stream after block l at chosen positions (LoReFT, DiReFT):  method.edit_residual(l, x, positions)
  seam 2, extra keys/values inside attention (prefix-tuning):                   method.prefix_kv(l, batch_size)
  seam 3, element-wise scales on q, v and the FFN up projection (PEDRO):       method.scales(l, x, prompt_mask, cache)
The model holds no hidden state: a KVCache object is passed to forward by the caller (see `generate`).
"""
import http.client
import json
import math
import os
import re
import struct
import sys
import urllib.request
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------------------------------------------
# Configs: field names are exactly the Hugging Face config.json keys.


def _from_dict(cls, d: dict):
    """Build a config dataclass from a config.json dict, keeping only the keys the dataclass knows."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None = num_attention_heads (no grouped-query attention)
    head_dim: int | None = None  # None = hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama-3 style {"rope_type": "llama3", "factor": ...} or "linear"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    model_type: str = "llama"

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.model_type != "llama":
            raise ValueError(f"model_type {self.model_type!r} is not supported by Llama (expected 'llama')")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (LLaMA uses 'silu')")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        rope_type = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported (supported: default, linear, llama3)")

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        d = dict(d)
        if "rope_parameters" in d:  # transformers >= 5 nests rope_theta and the scaling under one key
            rp = dict(d.pop("rope_parameters") or {})
            d["rope_theta"] = rp.pop("rope_theta", d.get("rope_theta", 10000.0))
            d["rope_scaling"] = rp if rp.get("rope_type", "default") != "default" else None
        return _from_dict(cls, d)


@dataclass
class EncoderConfig:
    model_type: str = "roberta"  # "roberta" or "bert"
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    position_embedding_type: str = "absolute"
    id2label: dict | None = None  # present in fine-tuned classification checkpoints

    def __post_init__(self):
        if self.model_type not in ("roberta", "bert"):
            raise ValueError(f"model_type {self.model_type!r} is not supported by Encoder (expected roberta or bert)")
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (expected gelu)")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} is not supported")

    @property
    def position_offset(self) -> int:
        # RoBERTa numbers positions from pad_token_id + 1 (a fairseq legacy); BERT from 0.
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @property
    def max_length(self) -> int:
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        return _from_dict(cls, d)


# -----------------------------------------------------------------------------------------------------------------
# Building blocks shared by both architectures


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (as LLaMA does) and cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """Rotary frequencies theta^(-2i/d_h), i < d_h/2, with Llama-3 / linear scaling where the config asks."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    sc = cfg.rope_scaling or {}
    rope_type = sc.get("rope_type", sc.get("type", "default"))
    if rope_type == "linear":
        inv_freq = inv_freq / sc["factor"]
    elif rope_type == "llama3":  # long wavelengths slowed by `factor`, short kept, smooth ramp between
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old_len = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / lo) & (wavelen >= old_len / hi)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    return inv_freq.float()


def apply_rope(x, cos, sin):
    """Rotate pairs (i, i + d_h/2) of x [B, H, T, d_h] (the Hugging Face half-split convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


def recompute_in_backward(fn, *args):
    """fn(*args), for PEDRO's FFN scale: in training, autograd keeps fn's inputs and recomputes fn in the backward
    (torch.utils.checkpoint) instead of keeping the scaled [B, T, d_ff] state it makes. With frozen weights the inputs
    are what the frozen model keeps anyway, so the scale costs no activation memory."""
    return checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args)


def attention_mask_4d(attention_mask, n_prefix: int, T: int, causal: bool):
    """Boolean mask [B, 1, T, S] (True = may attend) over S = n_prefix + attention_mask.shape[1] keys.

    attention_mask [B, S - n_prefix] has 1 for real tokens (past and current) and 0 for padding. Prefix keys are
    always visible; with `causal` the query at key index q sees keys <= q. Each query may always see itself, so a
    padding row never has an empty softmax (its output is unused).
    """
    B = attention_mask.shape[0]
    keys = torch.cat([attention_mask.new_ones(B, n_prefix), attention_mask], dim=1).bool()  # [B, S]
    S = keys.shape[1]
    q_idx = torch.arange(S - T, S, device=keys.device)[:, None]  # [T, 1] key index of each query
    k_idx = torch.arange(S, device=keys.device)[None, :]  # [1, S]
    mask = keys[:, None, None, :].expand(B, 1, T, S)  # [B, 1, T, S]
    if causal:
        mask = mask & (k_idx <= q_idx)
    return mask | (k_idx == q_idx)


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated [B, H_kv, max_len, d_h] per layer.

    `length` counts the filled slots (prefix-tuning's virtual tokens included). The model writes the new keys at
    [length, length + T) in every layer and advances `length` once per forward. `scales` keeps per-layer vectors
    a method computed at prefill (PEDRO) so decode steps reuse them.
    """

    def __init__(self, num_layers, batch_size, max_len, num_kv_heads, head_dim, device=None, dtype=torch.float32):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.max_len, self.length, self.scales = max_len, 0, {}

    def update(self, layer: int, k, v):
        """Store k, v [B, H_kv, T, d_h] after the filled slots; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache is full: {end} positions needed, {self.max_len} allocated")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


# -----------------------------------------------------------------------------------------------------------------
# LLaMA decoder. Module names equal the HF state-dict names (model.layers.0.self_attn.q_proj, ...).


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.n_kv, self.hd = layer, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.hidden_size, bias=cfg.attention_bias)

    def forward(self, x, cos, sin, mask, cache, method, scales):
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, H*d_h], [B, T, H_kv*d_h] x2
        if scales is not None:  # seam 3 (PEDRO): prompt-dependent element-wise scales, q before RoPE
            q, v = q * scales.q, v * scales.v
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)  # [B, H, T, d_h]
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # [B, H_kv, T, d_h]
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # [B, H_kv, T, d_h]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if method is not None and (cache is None or cache.length == 0):
            prefix = method.prefix_kv(self.layer, B)  # seam 2 (prefix-tuning): learned keys/values, not rotated
            if prefix is not None:
                k, v = torch.cat([prefix[0].to(k.dtype), k], 2), torch.cat([prefix[1].to(v.dtype), v], 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # [B, H_kv, S, d_h]: past (and prefix) keys first
        if mask is None:  # no padding and nothing before these T tokens but (for T=1) the whole past
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x, scales):
        gate, up = F.silu(self.gate_proj(x)), self.up_proj(x)  # [B, T, d_ff] each
        if scales is None:
            return self.down_proj(gate * up)
        # seam 3 (PEDRO): gate ⊙ (l_u ⊙ up), recomputed in the backward (keeps gate and up, as the frozen model does)
        return self.down_proj(recompute_in_backward(lambda g, u, s: g * (u * s), gate, up, scales.u))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, cos, sin, mask, cache, method, prompt_mask):
        h = self.input_layernorm(x)
        scales = None if method is None else method.scales(self.layer, h, prompt_mask, cache)  # seam 3 (PEDRO)
        x = x + self.self_attn(h, cos, sin, mask, cache, method, scales)
        return x + self.mlp(self.post_attention_layernorm(x), scales)


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaBlock(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.inv_freq = rope_inv_freq(cfg)  # fp32, deliberately not a buffer so model.to(bfloat16) cannot round it

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache(len(self.layers), batch_size, max_len, self.config.num_key_value_heads,
                       self.config.head_dim, p.device, p.dtype)

    def forward(self, input_ids, attention_mask=None, cache=None, method=None, positions=None, prompt_mask=None):
        """input_ids [B, T] -> logits [B, T, vocab].

        attention_mask [B, past + T]: 1 = real token, 0 = padding (left or right); None = no padding.
        cache: a KVCache to read the past from and append these T tokens to; None = the T tokens are the whole input.
        method: a reft.py method (or None); positions: where its residual edits act (seam 1), only at prefill;
        prompt_mask [B, T]: which of these tokens are prompt (PEDRO pools over them; default attention_mask).
        """
        B, T = input_ids.shape
        cfg = self.config
        past = cache.length if cache is not None else 0  # filled cache slots, prefix included
        n_virtual = method.num_virtual_tokens if method is not None else 0  # prefix-tuning's P, else 0
        n_prefix = n_virtual if past == 0 else 0  # prefix keys added in this call (later they sit in the cache)
        n_real = (past - n_virtual if past else 0) + T  # real tokens (past and current) the queries can see
        check_input_ids(input_ids, cfg.vocab_size)
        if n_virtual + n_real > cfg.max_position_embeddings:
            raise ValueError(f"sequence of {n_real} tokens (+{n_virtual} virtual) is longer than the model's "
                             f"context (max_position_embeddings={cfg.max_position_embeddings}); shorten the input")
        if attention_mask is not None:
            if attention_mask.shape != (B, n_real):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, n_real)} "
                                 "(batch, past + current real tokens)")
            pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:] + n_virtual  # [B, T] left pad ok
            mask = attention_mask_4d(attention_mask, n_virtual, T, causal=True)
        else:  # no padding: plain causal attention over everything before, no mask tensor needed at T=1
            pos = torch.arange(n_virtual + n_real - T, n_virtual + n_real, device=input_ids.device)[None].expand(B, T)
            needs_mask = T > 1 and n_virtual + n_real > T
            mask = attention_mask_4d(input_ids.new_ones(B, n_real), n_virtual, T, causal=True) if needs_mask else None
        if self.inv_freq.device != input_ids.device:
            self.inv_freq = self.inv_freq.to(input_ids.device)
        freqs = pos[..., None].float() * self.inv_freq  # [B, T, d_h/2]
        cos = torch.cat([freqs.cos(), freqs.cos()], -1)[:, None]  # [B, 1, T, d_h]
        sin = torch.cat([freqs.sin(), freqs.sin()], -1)[:, None]
        x = self.embed_tokens(input_ids)  # [B, T, d]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if prompt_mask is None and attention_mask is not None:  # the documented default: this call's real tokens
            prompt_mask = attention_mask[:, -T:]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, method, prompt_mask)
            if method is not None and positions is not None:
                x = method.edit_residual(layer.layer, x, positions)  # seam 1 (LoReFT/DiReFT)
        if cache is not None:
            cache.length += n_prefix + T
        return self.lm_head(self.norm(x))


def check_input_ids(input_ids, vocab_size: int):
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"token id {int(input_ids.max() if input_ids.max() >= vocab_size else input_ids.min())} "
                         f"is out of range for a vocabulary of {vocab_size}; was the right tokenizer used?")


# -----------------------------------------------------------------------------------------------------------------
# BERT/RoBERTa encoder (post-LayerNorm). HF's deep names (encoder.layer.0.attention.self.query) are renamed to
# these flat ones by the table ENCODER_RENAMES below.


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, layer: int):
        super().__init__()
        d, self.layer, self.n_head = cfg.hidden_size, layer, cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(d, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, d)
        self.output_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.drop, self.attn_drop = nn.Dropout(cfg.hidden_dropout_prob), cfg.attention_probs_dropout_prob
        self.gelu_approx = "none" if cfg.hidden_act == "gelu" else "tanh"

    def forward(self, x, mask, method, prompt_mask):
        B, T, d = x.shape
        hd = d // self.n_head
        scales = None if method is None else method.scales(self.layer, x, prompt_mask, None)  # seam 3 (PEDRO)
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, d] each
        if scales is not None:
            q, v = q * scales.q, v * scales.v
        q, k, v = (t.view(B, T, self.n_head, hd).transpose(1, 2) for t in (q, k, v))  # [B, H, T, d_h]
        if method is not None:
            prefix = method.prefix_kv(self.layer, B)  # seam 2 (prefix-tuning): visible to every token
            if prefix is not None:
                k, v = torch.cat([prefix[0].to(k.dtype), k], 2), torch.cat([prefix[1].to(v.dtype), v], 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        x = self.attn_norm(x + self.drop(self.attn_out(y.transpose(1, 2).reshape(B, T, d))))
        up = self.intermediate(x)  # [B, T, d_ff]
        if scales is None:
            up = F.gelu(up, approximate=self.gelu_approx)
        else:  # seam 3 (PEDRO): l_u ⊙ gelu(up), recomputed in the backward (keeps up, as the frozen model does)
            up = recompute_in_backward(lambda u, s: F.gelu(u, approximate=self.gelu_approx) * s, up, scales.u)
        return self.output_norm(x + self.drop(self.output(up)))


class ClassificationHead(nn.Module):
    """On the first token: RoBERTa out_proj(tanh(dense(h))); BERT out_proj(pooled) (the pooler is the base's)."""

    def __init__(self, cfg: EncoderConfig, num_labels: int):
        super().__init__()
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.model_type == "roberta" else None
        self.out_proj = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, h):  # h [B, d] -> logits [B, num_labels]
        if self.dense is not None:
            h = torch.tanh(self.dense(self.drop(h)))
        return self.out_proj(self.drop(h))


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, num_labels: int = 0):
        super().__init__()
        self.config = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.embed_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.layers = nn.ModuleList(EncoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.model_type == "bert" else None
        self.classifier = ClassificationHead(cfg, num_labels) if num_labels else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, method=None, positions=None,
                prompt_mask=None):
        """input_ids [B, T] -> last hidden states [B, T, d]. attention_mask [B, T]: 1 = real token, 0 = padding."""
        B, T = input_ids.shape
        cfg = self.config
        check_input_ids(input_ids, cfg.vocab_size)
        if T > cfg.max_length:
            raise ValueError(f"sequence of {T} tokens is longer than the model's context ({cfg.max_length}); "
                             "shorten the input")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_mask = attention_mask if prompt_mask is None else prompt_mask  # PEDRO pools over real tokens
        if cfg.model_type == "roberta":  # padding tokens sit at position pad_token_id, real ones count from it
            not_pad = (input_ids != cfg.pad_token_id).long()
            pos = not_pad.cumsum(-1) * not_pad + cfg.pad_token_id
        else:
            pos = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos) + self.token_type_embeddings(token_type_ids)
        x = self.drop(self.embed_norm(x))  # [B, T, d]
        n_virtual = method.num_virtual_tokens if method is not None else 0
        mask = attention_mask_4d(attention_mask, n_virtual, T, causal=False)  # [B, 1, T, P + T]
        for layer in self.layers:
            x = layer(x, mask, method, prompt_mask)
            if method is not None and positions is not None:
                x = method.edit_residual(layer.layer, x, positions)  # seam 1 (LoReFT/DiReFT)
        return x

    def classify(self, hidden):
        """Last hidden states [B, T, d] -> logits [B, num_labels], from the first token (<s> / [CLS])."""
        if self.classifier is None:
            raise ValueError("this encoder has no classification head; call add_classifier(num_labels) first")
        h = hidden[:, 0]
        if self.pooler is not None:  # BERT's pooler: part of the pretrained base
            h = torch.tanh(self.pooler(h))
        return self.classifier(h)

    def add_classifier(self, num_labels: int) -> ClassificationHead:
        p = self.word_embeddings.weight
        self.classifier = ClassificationHead(self.config, num_labels).to(p.device, p.dtype)
        return self.classifier


# -----------------------------------------------------------------------------------------------------------------
# Generation: a prefill call over the prompt, then one-token decode calls that reuse the KV cache.


def sample_next(logits, temperature: float = 0.0, top_p: float = 1.0, generator=None):
    """logits [B, vocab] -> token ids [B]. temperature 0 = greedy; top_p < 1 keeps the smallest set of tokens
    whose probabilities sum to at least top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # tokens after the nucleus is already full
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: Llama, input_ids, attention_mask=None, max_new_tokens: int = 32, temperature: float = 0.0,
             top_p: float = 1.0, eos_id=None, method=None, positions=None, use_cache: bool = True, generator=None):
    """Continue prompts input_ids [B, T] (left-padded, attention_mask [B, T]) -> new tokens [B, <= max_new_tokens].

    The method's residual edits (positions) act on the prompt only, at prefill; generated tokens see them through
    the KV cache. use_cache=False recomputes the whole sequence every step with the same prompt edits: the reference
    the cached path must equal. Rows that reached eos_id are filled with eos_id; stops when all rows have.
    """
    B, T = input_ids.shape
    n_virtual = method.num_virtual_tokens if method is not None else 0
    if n_virtual + T + max_new_tokens > model.config.max_position_embeddings:
        raise ValueError(f"prompt of {T} tokens + {max_new_tokens} new tokens exceeds the model's context "
                         f"(max_position_embeddings={model.config.max_position_embeddings})")
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the faster unmasked attention path
    prompt_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    eos = torch.tensor([eos_id] if isinstance(eos_id, int) else (eos_id or []), device=input_ids.device)
    cache = model.new_cache(B, n_virtual + T + max_new_tokens) if use_cache else None
    ids, mask, out = input_ids, attention_mask, []
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    logits = model(ids, mask, cache, method, positions, prompt_mask)[:, -1]  # prefill
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_p, generator)
        nxt = torch.where(done, eos[0] if len(eos) else nxt, nxt)
        out.append(nxt)
        done = done | torch.isin(nxt, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
        if use_cache:  # decode: one new token, the past comes from the cache, no edits (they live in the cache)
            logits = model(nxt[:, None], mask, cache, method)[:, -1]
        else:  # reference: the whole sequence again, with the same prompt edits and prompt mask
            ids = torch.cat([ids, nxt[:, None]], 1)
            pm = torch.cat([prompt_mask, prompt_mask.new_zeros(B, ids.shape[1] - T)], 1)
            logits = model(ids, mask, None, method, positions, pm)[:, -1]
    return torch.stack(out, 1)


# -----------------------------------------------------------------------------------------------------------------
# Loading public weights. Renames from other formats live in these tables: (regex on the checkpoint name, our name).

ENCODER_RENAMES = [
    (r"^(roberta|bert)\.", ""),  # the base-model prefix of *ForSequenceClassification checkpoints
    (r"^embeddings\.LayerNorm\.", "embed_norm."),
    (r"^embeddings\.", ""),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.", r"layers.\1."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.intermediate."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.output."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.output_norm."),
    (r"^pooler\.dense\.", "pooler."),
    (r"^classifier\.(dense|out_proj)\.", r"classifier.\1."),  # RoBERTa classification head
    (r"^classifier\.(weight|bias)$", r"classifier.out_proj.\1"),  # BERT classification head
    (r"\.gamma$", ".weight"), (r"\.beta$", ".bias"),  # LayerNorm names of old BERT checkpoints
]
ENCODER_IGNORED = r"(position_ids$|^lm_head\.|^cls\.)"  # buffers and pretraining (MLM/NSP) heads we do not use

LLAMA_RENAMES = [(r"^model\.", "")]

LLAMA2C_RENAMES = [  # llama2.c's names (model.py of karpathy/llama2.c) -> ours
    (r"^_orig_mod\.", ""),  # torch.compile'd training checkpoints
    (r"^tok_embeddings\.", "embed_tokens."),
    (r"^layers\.(\d+)\.attention\.w([qkvo])\.", r"layers.\1.self_attn.\2_proj."),
    (r"^layers\.(\d+)\.feed_forward\.w1\.", r"layers.\1.mlp.gate_proj."),
    (r"^layers\.(\d+)\.feed_forward\.w2\.", r"layers.\1.mlp.down_proj."),
    (r"^layers\.(\d+)\.feed_forward\.w3\.", r"layers.\1.mlp.up_proj."),
    (r"^layers\.(\d+)\.attention_norm\.", r"layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"layers.\1.post_attention_layernorm."),
    (r"^output\.", "lm_head."),
]

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def read_safetensors(path: str) -> dict:
    """The safetensors format: 8-byte little-endian header size, a JSON header {name: dtype, shape, offsets}, data."""
    with open(path, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        except (struct.error, ValueError, UnicodeDecodeError):
            raise ValueError(f"{path} is not a safetensors file (bad header)") from None
        data = bytearray(f.read())
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, (a, b) = _ST_DTYPES[info["dtype"]], info["data_offsets"]
        t = torch.frombuffer(data, dtype=dtype, count=(b - a) // dtype.itemsize, offset=a) if b > a else \
            torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"])
    return out


def read_hf_weights(folder: str) -> dict:
    """All tensors of a HF model folder: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", _torch_load)):
        index = os.path.join(folder, index_name)
        if os.path.exists(index):
            state = {}
            for shard in sorted(set(json.load(open(index))["weight_map"].values())):
                if not os.path.exists(os.path.join(folder, shard)):
                    raise FileNotFoundError(f"{index} lists shard {shard!r}, which is not in {folder}")
                state.update(reader(os.path.join(folder, shard)))
            return state
    for name, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", _torch_load)):
        if os.path.exists(os.path.join(folder, name)):
            return reader(os.path.join(folder, name))
    raise FileNotFoundError(f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json "
                            "(+ shards) or pytorch_model.bin")


def _torch_load(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ValueError(f"{path} is not a PyTorch checkpoint torch.load can read safely ({type(e).__name__})") from None


def _rename(name: str, table) -> str:
    for pattern, repl in table:
        name = re.sub(pattern, repl, name)
    return name


def load_weights(model: nn.Module, state: dict, renames, ignored: str | None = None, source: str = "checkpoint"):
    """Strict copy: every checkpoint tensor must land on a model tensor of the same shape, and every model tensor
    must be filled. Errors name the offending key."""
    own = model.state_dict()
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    filled = set()
    with torch.no_grad():
        for key, tensor in state.items():
            name = _rename(key, renames)
            if (ignored and re.search(ignored, key)) or name in tied:
                continue
            if name not in own:
                raise ValueError(f"unexpected tensor {key!r} in {source} (no such weight in {type(model).__name__})")
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise ValueError(f"shape mismatch for {key!r} in {source}: checkpoint {tuple(tensor.shape)}, "
                                 f"model {tuple(own[name].shape)} (does config.json match the weights?)")
            own[name].copy_(tensor)
            filled.add(name)
    missing = sorted(set(own) - filled - tied)
    if missing:
        raise ValueError(f"{source} is missing {len(missing)} tensor(s), first: {missing[0]!r}")


# llama2.c models were trained on BOS-delimited stories and never saw EOS (id 2): a story ends when the model predicts
# BOS, and llama2.c's run.c stops generating there. So BOS (id 1) is these models' end-of-sequence token.
LLAMA2C_END = 1


def _llama2c_permute(w, n_heads: int):
    """llama2.c rotates interleaved pairs (0,1),(2,3)...; HF rotates halves (i, i+d_h/2). Reorder q/k rows so that
    our half-split RoPE computes exactly llama2.c's rotation (the permutation of HF's convert_llama_weights)."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _from_llama2c_state(state: dict, cfg: LlamaConfig, source: str) -> Llama:
    model = Llama(cfg)
    state = {_rename(k, LLAMA2C_RENAMES): v for k, v in state.items()}
    for i in range(cfg.num_hidden_layers):
        for proj, heads in (("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)):
            key = f"layers.{i}.self_attn.{proj}.weight"
            if key in state:
                state[key] = _llama2c_permute(state[key], heads)
    load_weights(model, state, [], source=source)
    return model


def read_llama2c_bin(path: str) -> Llama:
    """llama2.c's legacy export: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    vocab_size < 0 means an untied output head), then fp32 weights in a fixed order (run.c memory_map_weights)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) < 28:
        raise ValueError(f"{path} is too small to be a llama2.c checkpoint")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", raw[:28].tobytes())
    if dim == 0x616B3432 or not (0 < dim < 1 << 16 and 0 < n_heads <= dim and 0 < n_kv <= n_heads):
        raise ValueError(f"{path} is not a legacy llama2.c export (header {dim, hidden, n_layers, n_heads}); "
                         "the versioned 'ak42' export is not supported, export with --version 0")
    shared, vocab = vocab > 0, abs(vocab)
    head = dim // n_heads
    w = torch.from_numpy(raw[28:28 + (len(raw) - 28) // 4 * 4].view(np.float32).copy())  # whole floats only
    sizes = [("tok_embeddings.weight", (vocab, dim)), ("attention_norm", (n_layers, dim)),
             ("wq", (n_layers, dim, dim)), ("wk", (n_layers, n_kv * head, dim)), ("wv", (n_layers, n_kv * head, dim)),
             ("wo", (n_layers, dim, dim)), ("ffn_norm", (n_layers, dim)), ("w1", (n_layers, hidden, dim)),
             ("w2", (n_layers, dim, hidden)), ("w3", (n_layers, hidden, dim)), ("norm.weight", (dim,)),
             ("freq_cis", (seq_len * head,))]  # the legacy export still stores the old RoPE table: skipped
    if not shared:
        sizes.append(("output.weight", (vocab, dim)))
    expected = sum(math.prod(s) for _, s in sizes)
    if len(raw) != 28 + 4 * expected:  # a byte count, so a cut inside the last float is caught too
        raise ValueError(f"{path}: header promises {expected} floats, file holds {(len(raw) - 28) / 4:g} "
                         "(truncated or not llama2.c)")
    parts, off = {}, 0
    for name, shape in sizes:
        parts[name] = w[off:off + math.prod(shape)].view(shape)
        off += math.prod(shape)
    state = {k: parts[k] for k in ("tok_embeddings.weight", "norm.weight", "output.weight") if k in parts}
    for i in range(n_layers):
        for k in ("wq", "wk", "wv", "wo"):
            state[f"layers.{i}.attention.{k}.weight"] = parts[k][i]
        for k in ("w1", "w2", "w3"):
            state[f"layers.{i}.feed_forward.{k}.weight"] = parts[k][i]
        state[f"layers.{i}.attention_norm.weight"] = parts["attention_norm"][i]
        state[f"layers.{i}.ffn_norm.weight"] = parts["ffn_norm"][i]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=seq_len,
                      rms_norm_eps=1e-5, tie_word_embeddings=shared, eos_token_id=LLAMA2C_END)
    return _from_llama2c_state(state, cfg, path)


def read_llama2c_pt(path: str) -> Llama:
    """llama2.c's training checkpoint (train.py's ckpt.pt): {"model": state_dict, "model_args": {...}, ...}."""
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise ValueError(f"{path} is not a llama2.c training checkpoint (expected keys 'model' and 'model_args')")
    a, state = ckpt["model_args"], ckpt["model"]
    state = {_rename(k, LLAMA2C_RENAMES[:1]): v for k, v in state.items()}
    tied = "output.weight" not in state or state["output.weight"].data_ptr() == state["tok_embeddings.weight"].data_ptr() \
        or torch.equal(state["output.weight"], state["tok_embeddings.weight"])
    if tied:
        state.pop("output.weight", None)
    cfg = LlamaConfig(vocab_size=a["vocab_size"], hidden_size=a["dim"],
                      intermediate_size=state["layers.0.feed_forward.w1.weight"].shape[0],
                      num_hidden_layers=a["n_layers"], num_attention_heads=a["n_heads"],
                      num_key_value_heads=a.get("n_kv_heads") or a["n_heads"],
                      max_position_embeddings=a.get("max_seq_len", 2048), rms_norm_eps=a.get("norm_eps", 1e-5),
                      tie_word_embeddings=tied, eos_token_id=LLAMA2C_END)
    return _from_llama2c_state(state, cfg, path)


# Public checkpoints that can be fetched by name (llama2.c's TinyStories models, MIT).
TINYLLAMAS = "https://huggingface.co/karpathy/tinyllamas/resolve/main/"
PUBLIC_FILES = {
    "stories260K": TINYLLAMAS + "stories260K/stories260K.bin",
    "tok512.model": TINYLLAMAS + "stories260K/tok512.model",
    "stories15M": TINYLLAMAS + "stories15M.bin",
    "stories42M": TINYLLAMAS + "stories42M.bin",
    "stories110M": TINYLLAMAS + "stories110M.bin",
    "tokenizer.model": "https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.model",
}
CACHE_DIR = os.environ.get("REFT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "reft-from-scratch"))


def download(url: str, dest: str) -> str:
    """Fetch url to dest once; later calls use the local copy. The bytes go to dest.part, renamed when complete, so
    dest is never a partial file. HTTP 401/404 (no such file, or a private repo) -> FileNotFoundError; any other
    failure -> ConnectionError."""
    if os.path.exists(dest):
        return dest
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    part = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            os.makedirs(os.path.dirname(dest), exist_ok=True)  # only once the server answers: no empty folders
            size = r.headers.get("Content-Length")
            with open(part, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                got = f.tell()
        if size is not None and got != int(size):  # http.client ends a cut stream quietly, as if it were complete
            raise OSError(f"connection closed after {got} of {size} bytes")
        os.replace(part, dest)
    except (OSError, http.client.HTTPException) as e:
        if getattr(e, "code", None) in (401, 404):  # HTTPError: the Hub answers 401 for repos that do not exist
            raise FileNotFoundError(f"{url}: HTTP {e.code} {e.reason} (no such file, or a private repo)") from None
        raise ConnectionError(f"cannot download {url} ({getattr(e, 'reason', None) or e}); offline? Download it "
                              "yourself and pass the local path instead") from None
    finally:
        if os.path.exists(part):
            os.remove(part)  # a broken download leaves nothing behind
    return dest


def download_repo(repo: str, folder: str) -> str:
    """config.json, the weights (one file, or an index and its shards) and the tokenizer files of a Hugging Face
    repo. They land in folder.part, renamed to folder when all are there: an existing folder is a complete copy."""
    base, part = f"https://huggingface.co/{repo}/resolve/main/", folder + ".part"
    try:
        download(base + "config.json", os.path.join(part, "config.json"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{repo}: no such local file or folder, nor a public Hugging Face repo ({e})") from None
    for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin"):  # the first one found
        try:
            path = download(base + name, os.path.join(part, name))
        except FileNotFoundError:  # the repo stores its weights under another name
            continue
        if name.endswith("index.json"):  # sharded: the index maps every tensor to one of the shard files
            for shard in sorted(set(json.load(open(path))["weight_map"].values())):
                download(base + shard, os.path.join(part, shard))
        break
    else:
        raise FileNotFoundError(f"{repo} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    for name in ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json"):
        try:
            download(base + name, os.path.join(part, name))
        except FileNotFoundError:  # a repo has one tokenizer format (or none): the others are absent
            pass
    os.replace(part, folder)
    return folder


def _is_repo_id(name: str) -> bool:
    """A Hugging Face repo id is "org/name" and cannot be mistaken for a file path, so that a mistyped local path is a
    FileNotFoundError, not a download: runs/model.bin, ckpt/last.pt, .cache/x are paths; meta-llama/Llama-3.2-1B is
    a repo id."""
    file_suffix = r"\.(bin|pt|pth|ckpt|safetensors|gguf|model|json|txt)$"
    return re.fullmatch(r"[\w-]+/[\w.-]+", name) is not None and re.search(file_suffix, name) is None


def resolve(name_or_path: str) -> str:
    """A local path as is; a known public name (stories260K, tok512.model, ...) or a HF repo id ("org/name")
    downloaded once into CACHE_DIR."""
    if os.path.exists(name_or_path):
        return name_or_path
    if name_or_path in PUBLIC_FILES:
        url = PUBLIC_FILES[name_or_path]
        return download(url, os.path.join(CACHE_DIR, url.rsplit("/", 1)[1]))
    if _is_repo_id(name_or_path):
        folder = os.path.join(CACHE_DIR, name_or_path.replace("/", "--"))
        return folder if os.path.isdir(folder) else download_repo(name_or_path, folder)
    raise FileNotFoundError(f"{name_or_path}: no such file or folder (and not a known model name: "
                            f"{', '.join(PUBLIC_FILES)}, or a Hugging Face repo id)")


def _check_llama_json(d: dict, source: str):
    """config.json keys that LlamaConfig drops must not change the computation. attention_dropout (training only)
    and pretraining_tp (a sliced matmul, numerically the same) are safe to drop; an active sliding window is not.
    (transformers' LlamaModel ignores sliding_window too, but a llama-typed checkpoint that sets it was trained to
    see only the last W tokens, which full attention does not reproduce on longer inputs.)"""
    window = d.get("sliding_window")
    if window is not None and d.get("use_sliding_window", True) and window < d.get("max_position_embeddings", 2048):
        raise ValueError(f"{source}: sliding_window={window} (attention to the last {window} tokens only) is not "
                         "supported; this model attends to the whole context")


def from_pretrained(path: str, dtype=None, device=None) -> "Llama | Encoder":
    """Load a HF folder (config.json + weights), a llama2.c .bin export or .pt training checkpoint, or a public
    name (see `resolve`). dtype None keeps the checkpoint's dtype (llama2.c: fp32)."""
    path = resolve(path)
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{path} is not a model folder: expected config.json and model.safetensors "
                                    "(or model.safetensors.index.json, or pytorch_model.bin)")
        d = json.load(open(cfg_path))
        state = read_hf_weights(path)
        model_type = d.get("model_type")
        if model_type == "llama":
            _check_llama_json(d, cfg_path)
            model = Llama(LlamaConfig.from_dict(d))
            load_weights(model, state, LLAMA_RENAMES, source=path)
        elif model_type in ("roberta", "bert"):
            cfg = EncoderConfig.from_dict(d)
            head = state.get("classifier.out_proj.weight", state.get("classifier.weight"))  # fine-tuned head?
            model = Encoder(cfg, num_labels=head.shape[0] if head is not None else 0)
            load_weights(model, state, ENCODER_RENAMES, ENCODER_IGNORED + (r"|^pooler\." if cfg.model_type ==
                                                                           "roberta" else ""), source=path)
        else:
            raise ValueError(f"{cfg_path}: model_type {model_type!r} is not supported (llama, roberta, bert)")
        if dtype is None:
            dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    elif path.endswith(".pt"):
        model = read_llama2c_pt(path)
    else:
        model = read_llama2c_bin(path)
    return model.to(device=device, dtype=dtype).eval()


# -----------------------------------------------------------------------------------------------------------------
# Look at a model: python model.py CHECKPOINT [--tokenizer FILE] --prompt TEXT --max-new-tokens N [--temperature T]


def main(argv=None):
    import argparse
    from data import load_tokenizer  # the CLI only: the library itself does not depend on data.py

    p = argparse.ArgumentParser(description="Load a checkpoint and print the continuation of a prompt.")
    p.add_argument("checkpoint", help="HF folder, llama2.c .bin/.pt, or a public name such as stories260K")
    p.add_argument("--tokenizer", help="tokenizer file or folder (default: the checkpoint's folder)")
    p.add_argument("--prompt", default="", help="text to continue; empty = start from BOS")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        model = from_pretrained(args.checkpoint, device=args.device)
        if not isinstance(model, Llama):
            raise ValueError(f"{args.checkpoint} is an encoder ({model.config.model_type}); it cannot generate text")
        tok_path = args.tokenizer or (args.checkpoint if os.path.isdir(resolve(args.checkpoint)) else None)
        if tok_path is None:
            raise ValueError("a llama2.c checkpoint needs --tokenizer (e.g. tok512.model for stories260K)")
        tok = load_tokenizer(resolve(tok_path))
        ids = torch.tensor([tok.encode(args.prompt, bos=True)], device=args.device)
        g = torch.Generator(device=args.device).manual_seed(args.seed)
        out = generate(model, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_p=args.top_p, eos_id=model.config.eos_token_id, generator=g)
        print(tok.decode(ids[0].tolist() + out[0].tolist()))  # together, so the spacing is the tokenizer's
    except (ValueError, OSError) as e:  # bad input or no network: one clear line, no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
