"""
model.py: a LLaMA-style decoder and a BERT/RoBERTa-style encoder in plain PyTorch (WALKTHROUGH.md §1-§5).

Read top to bottom: the configs, RMSNorm, RoPE, the attention mask and the KV cache, the decoder's attention, MLP,
block and model, then the encoder, then sampling and `generate`. `from_pretrained` loads public weights (Hugging
Face folders, llama2.c checkpoints; the formats live in support/checkpoints.py), and the logits equal transformers'
(tests/test_model.py).

The methods of reft.py act at five explicit call sites, marked "seam" below (grep for it), named by where they act,
in forward order. The model knows no particular method: a seam hands over what it may edit and uses what returns.
  seam 1, the block's normed input:        ctx = method.block_input(l, h, prompt_mask, cache)  (PEDRO reads it)
  seam 2, the q, k, v projections:         y = method.project(l, name, x, y, ctx)      (LoRA adds ΔW x; PEDRO scales)
  seam 3, the keys and values at prefill:  k, v = method.extra_kv(l, k, v)            (prefix-tuning puts P first)
  seam 4, the FFN's hidden state:          h = method.ffn_hidden(l, gate, up, act, ctx)      (PEDRO scales the up state)
  seam 5, the residual stream after block l: x = method.residual(l, x, positions)     (LoReFT, DiReFT)
ctx is whatever the method returned at seam 1 for this block (None for all but PEDRO); the model only passes it on.
The model holds no hidden state: a KVCache object is passed to forward by the caller (see `generate`).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------------------------------------------
# Configs: field names are exactly the Hugging Face config.json keys (support/checkpoints.py reads config.json).


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
        if self.model_type not in ("llama", "qwen2"):  # Qwen2/2.5 is this block with biases on q, k and v
            raise ValueError(f"model_type {self.model_type!r} is not supported by Llama (expected llama or qwen2)")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (LLaMA uses 'silu')")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        rope_type = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported (supported: default, linear, llama3)")

    @property
    def qkv_bias(self) -> bool:  # HF's Qwen2Attention: biases on q/k/v, none on o, and no config key for it
        return self.attention_bias or self.model_type == "qwen2"


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


# -----------------------------------------------------------------------------------------------------------------
# Building blocks shared by both architectures


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (as LLaMA does) and cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # x [..., d] -> [..., d]
        ### BEGIN SOLUTION rmsnorm
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)
        ### END SOLUTION rmsnorm


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """Rotary frequencies theta^(-2i/d_h), i < d_h/2, with Llama-3 / linear scaling where the config asks."""
    d = cfg.head_dim
    ### BEGIN SOLUTION rope
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))  # [d_h/2], fp64
    ### END SOLUTION rope
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


def rope_cos_sin(pos, inv_freq):
    """Token positions [B, T] -> cos, sin [B, 1, T, d_h] of the angles pos·θ_i, each θ_i used for both halves."""
    ### BEGIN SOLUTION rope
    freqs = pos[..., None].float() * inv_freq  # [B, T, d_h/2]
    angles = torch.cat([freqs, freqs], -1)[:, None]  # [B, 1, T, d_h]
    return angles.cos(), angles.sin()
    ### END SOLUTION rope


def apply_rope(x, cos, sin):
    """Rotate pairs (x[i], x[i + d_h/2]) of x [B, H, T, d_h] by angle pos·θ_i (Hugging Face's half-split convention):
        (x1, x2) -> (x1 cos − x2 sin, x2 cos + x1 sin)"""
    ### BEGIN SOLUTION rope
    x1, x2 = x.chunk(2, dim=-1)  # [B, H, T, d_h/2] each
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin
    ### END SOLUTION rope


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


def attention(q, k, v, mask, dropout_p: float = 0.0):
    """softmax(q kᵀ / √d_h + mask) v, shared by decoder and encoder: q [B, H, T, d_h], k, v [B, H_kv, S, d_h] ->
    [B, H, T, d_h]. mask: boolean [B, 1, T, S] (True = may attend), or None: causal (T = 1: the whole past)."""
    ### BEGIN SOLUTION attention
    T = q.shape[2]
    # GQA: query head h reads key/value head h // (H / H_kv) (enable_gqa; no copies of k and v)
    if mask is None:  # no padding and nothing before these T tokens but (for T=1) the whole past
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=True, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, dropout_p=dropout_p)
    ### END SOLUTION attention


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated [B, H_kv, max_len, d_h] per layer.

    `length` counts the filled slots (keys a method added at prefill included); the model writes new keys at
    [length, length + T) and advances `length` once per forward. `method_state`: the method's own values from prefill,
    reused at decode steps (PEDRO's vectors); the model never reads it."""

    def __init__(self, num_layers, batch_size, max_len, num_kv_heads, head_dim, device=None, dtype=torch.float32):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.max_len, self.length, self.method_state = max_len, 0, {}

    def update(self, layer: int, k, v):
        """Store k, v [B, H_kv, T, d_h] after the filled slots; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache is full: {end} positions needed, {self.max_len} allocated")
        ### BEGIN SOLUTION attention
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]
        ### END SOLUTION attention


# -----------------------------------------------------------------------------------------------------------------
# LLaMA decoder. Module names equal the HF state-dict names (model.layers.0.self_attn.q_proj, ...).


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.n_kv, self.hd = layer, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.hidden_size, bias=cfg.attention_bias)

    def forward(self, x, cos, sin, mask, cache, method=None, ctx=None):
        """x [B, T, d] -> [B, T, d]. mask: None (causal over these T tokens and the whole cached past) or a boolean
        [B, 1, T, S] over all S keys (True = may attend); cache: a KVCache or None; method, ctx: seams 2 and 3."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, H*d_h], [B, T, H_kv*d_h] x2
        if method is not None:  # seam 2: each projection, as a method edits it (LoRA: + ΔW x; PEDRO: l ⊙ y)
            q, k, v = (method.project(self.layer, name, x, y, ctx) for name, y in zip("qkv", (q, k, v)))
        q, k, v = self.heads(q, k, v, cos, sin)  # [B, H, T, d_h], [B, H_kv, T, d_h] x2; RoPE on q and k
        if method is not None and (cache is None or cache.length == 0):  # seam 3, at prefill: extra keys/values
            k, v = method.extra_kv(self.layer, k, v)  # (later steps find them in the cache)
        return self.attend(q, k, v, mask, cache)  # [B, T, d]

    def heads(self, q, k, v, cos, sin):
        """Projections [B, T, H·d_h] -> heads [B, H, T, d_h] (H_kv heads for k, v), RoPE on q and k."""
        ### BEGIN SOLUTION attention
        B, T, _ = q.shape
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)  # [B, H, T, d_h]
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # [B, H_kv, T, d_h]
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # [B, H_kv, T, d_h]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v
        ### END SOLUTION attention

    def attend(self, q, k, v, mask, cache):
        """softmax(q kᵀ / √d_h + mask) v over the cached past and these keys, then o_proj: -> [B, T, d]."""
        ### BEGIN SOLUTION attention
        B, _, T, _ = q.shape
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # [B, H_kv, S, d_h]: past (and prefix) keys first
        y = attention(q, k, v, mask)  # [B, H, T, d_h]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))
        ### END SOLUTION attention


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x, method=None, ctx=None):
        gate, up = self.gate_proj(x), self.up_proj(x)  # [B, T, d_ff] each
        if method is None:
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(method.ffn_hidden(self.layer, gate, up, F.silu, ctx))  # seam 4: silu(gate) ⊙ up


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg, layer)

    def forward(self, x, cos, sin, mask, cache, method, prompt_mask):
        h = self.input_layernorm(x)
        ctx = None if method is None else method.block_input(self.layer, h, prompt_mask, cache)  # seam 1
        x = x + self.self_attn(h, cos, sin, mask, cache, method, ctx)
        return x + self.mlp(self.post_attention_layernorm(x), method, ctx)


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
        """input_ids [B, T] -> logits [B, T, vocab]: embed -> blocks (seam 5 after each) -> norm -> head.
        attention_mask [B, past + T]: 1 = real token, 0 = padding (left or right); None = no padding.
        cache: a KVCache to read the past from and append these T tokens to; None = the T tokens are the whole input.
        method: a reft.py method (or None); positions: where its residual edits act (seam 5), only at prefill;
        prompt_mask [B, T]: which of these tokens are prompt (PEDRO pools over them; default attention_mask).
        """
        check_input_ids(input_ids, self.config.vocab_size)
        n_virtual = method.num_virtual_tokens if method is not None else 0  # keys a method puts first (prefix's P)
        rope_pos, mask, added = self.positions_and_mask(input_ids, attention_mask, cache, n_virtual)
        if self.inv_freq.device != input_ids.device:
            self.inv_freq = self.inv_freq.to(input_ids.device)
        x = self.embed_tokens(input_ids)  # [B, T, d]
        cos, sin = rope_cos_sin(rope_pos, self.inv_freq)  # [B, 1, T, d_h] each
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if prompt_mask is None and attention_mask is not None:  # the documented default: this call's real tokens
            prompt_mask = attention_mask[:, -input_ids.shape[1]:]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, method, prompt_mask)
            if method is not None and positions is not None:
                x = method.residual(layer.layer, x, positions)  # seam 5: the residual stream after this block
        if cache is not None:
            cache.length += added
        return self.lm_head(self.norm(x))

    def positions_and_mask(self, input_ids, attention_mask, cache, n_virtual: int):
        """This call's bookkeeping, prefill or decode: (RoPE positions [B, T], the attention mask [B, 1, T, S] or None
        for plain causal attention, the cache slots it fills). n_virtual keys a method puts before the real tokens
        (prefix-tuning's P) are added at prefill only, hold positions 0..P-1, and are always visible."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0  # filled cache slots, virtual keys included
        n_real = (past - n_virtual if past else 0) + T  # real tokens (past and current) the queries can see
        if n_virtual + n_real > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {n_real} tokens (+{n_virtual} virtual) is longer than the model's context "
                             f"(max_position_embeddings={self.config.max_position_embeddings}); shorten the input")
        if attention_mask is not None:
            if attention_mask.shape != (B, n_real):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, n_real)} "
                                 "(batch, past + current real tokens)")
            rope_pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # [B, T] from 0: left padding ok
            mask = attention_mask_4d(attention_mask, n_virtual, T, causal=True)
        else:  # no padding: plain causal attention over everything before, no mask tensor needed at T=1
            rope_pos = torch.arange(n_real - T, n_real, device=input_ids.device)[None].expand(B, T)
            needs_mask = T > 1 and n_virtual + n_real > T
            mask = attention_mask_4d(input_ids.new_ones(B, n_real), n_virtual, T, causal=True) if needs_mask else None
        if n_virtual:  # the P virtual tokens come first, so real tokens' RoPE positions start at P
            ### BEGIN SOLUTION prefix
            rope_pos = rope_pos + n_virtual
            ### END SOLUTION prefix
        return rope_pos, mask, (n_virtual if past == 0 else 0) + T


def check_input_ids(input_ids, vocab_size: int):
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"token id {int(input_ids.max() if input_ids.max() >= vocab_size else input_ids.min())} "
                         f"is out of range for a vocabulary of {vocab_size}; was the right tokenizer used?")


# -----------------------------------------------------------------------------------------------------------------
# BERT/RoBERTa encoder (post-LayerNorm). HF's deep names (encoder.layer.0.attention.self.query) are renamed to
# these flat ones by the table ENCODER_RENAMES in support/checkpoints.py.


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
        ctx = None if method is None else method.block_input(self.layer, x, prompt_mask, None)  # seam 1
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, d] each
        if method is not None:  # seam 2: each projection, as a method edits it
            q, k, v = (method.project(self.layer, name, x, y, ctx) for name, y in zip("qkv", (q, k, v)))
        q, k, v = (t.view(B, T, self.n_head, hd).transpose(1, 2) for t in (q, k, v))  # [B, H, T, d_h]
        if method is not None:  # seam 3: extra keys/values, visible to every token
            k, v = method.extra_kv(self.layer, k, v)
        y = attention(q, k, v, mask, self.attn_drop if self.training else 0.0)  # [B, H, T, d_h], never causal
        x = self.attn_norm(x + self.drop(self.attn_out(y.transpose(1, 2).reshape(B, T, d))))
        up, act = self.intermediate(x), lambda u: F.gelu(u, approximate=self.gelu_approx)  # [B, T, d_ff]
        h = act(up) if method is None else method.ffn_hidden(self.layer, None, up, act, ctx)  # seam 4: gelu(up)
        return self.output_norm(x + self.drop(self.output(h)))


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
            position_ids = not_pad.cumsum(-1) * not_pad + cfg.pad_token_id
        else:
            position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids) + \
            self.token_type_embeddings(token_type_ids)
        x = self.drop(self.embed_norm(x))  # [B, T, d]
        n_virtual = method.num_virtual_tokens if method is not None else 0
        mask = attention_mask_4d(attention_mask, n_virtual, T, causal=False)  # [B, 1, T, P + T]
        for layer in self.layers:
            x = layer(x, mask, method, prompt_mask)
            if method is not None and positions is not None:
                x = method.residual(layer.layer, x, positions)  # seam 5 (LoReFT/DiReFT)
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
    ### BEGIN SOLUTION generate
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
    ### END SOLUTION generate


# Loading public weights (Hugging Face folders, llama2.c exports, downloads) is support/checkpoints.from_pretrained:
# formats sit above this file, which imports nothing of the project.
if __name__ == "__main__":  # python model.py CHECKPOINT [--tokenizer FILE] --prompt TEXT --max-new-tokens N
    from support.cli import model_main
    model_main()
