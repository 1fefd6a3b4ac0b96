"""
reft.py: the four methods, each a plain nn.Module acting at one of model.py's three seams.

  LoReFT, DiReFT (ReFT paper, arXiv 2404.03592 §3.2)  -> seam 1: the residual stream after chosen blocks, at chosen
                                                          prompt positions, edited once at prefill
  PrefixTuning (Li & Liang, arXiv 2101.00190)          -> seam 2: learned keys/values inside every attention
  PEDRO (Xie et al., arXiv 2409.17834)                 -> seam 3: prompt-dependent scales on q, v and the FFN up

A method is passed to the model's forward (`model(ids, mask, method=m, positions=p)`); the base model is frozen.
Only the method's weights and its MethodConfig are saved (`save` / `load`).
"""
import json
import os
import re
import tempfile
from collections import namedtuple
from copy import deepcopy
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"linear": lambda x: x, "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


class Method(nn.Module):
    """The three seams model.py calls. Each method overrides the one it acts at; the others do nothing."""

    num_virtual_tokens = 0  # prefix-tuning's P (keys the real tokens attend to before their own)

    def edit_residual(self, layer: int, h, positions):  # seam 1: h [B, T, d] -> h [B, T, d]
        return h

    def prefix_kv(self, layer: int, batch_size: int):  # seam 2: None or (k, v) each [B, H_kv, P, d_h]
        return None

    def scales(self, layer: int, x, prompt_mask, cache):  # seam 3: None or Scales(q, v, u), each [B, 1, width]
        return None


# -----------------------------------------------------------------------------------------------------------------
# Positions: "fA+lB" = the first A and the last B prompt tokens (ReFT §4.1).


def parse_positions(spec: str) -> tuple[int, int]:
    """ "f7+l7" -> (7, 7); "f3" -> (3, 0); "l1" -> (0, 1)."""
    m = re.fullmatch(r"(?:f(\d+))?\+?(?:l(\d+))?", spec.strip())
    if not spec.strip() or m is None or (m.group(1) is None and m.group(2) is None) or \
            spec.strip().startswith("+") or spec.strip().endswith("+"):
        raise ValueError(f"bad positions {spec!r}: expected fA+lB, fA or lB (e.g. f1+l1, f3, l1)")
    first, last = int(m.group(1) or 0), int(m.group(2) or 0)
    if first + last == 0:
        raise ValueError(f"bad positions {spec!r}: at least one position is needed")
    return first, last


def num_groups(first: int, last: int, share_weights: bool) -> int:
    """Untied weights (the default for fA+lB) give one intervention for the first-A group and one for the last-B
    group on every layer (pyreft's reading of "untied"); tied weights, fA or lB alone, give one group."""
    return 2 if first and last and not share_weights else 1


# -----------------------------------------------------------------------------------------------------------------
# Seam 1: LoReFT and DiReFT


class LoReFT(nn.Module):
    """LoReFT, ReFT paper eq. (2):  Φ(h) = h + Rᵀ(W h + b − R h),  R ∈ ℝ^{r×d} with orthonormal rows.

    R is parametrized as the Q factor of a QR decomposition of a free matrix A ∈ ℝ^{d×r}: R = qr(A).Qᵀ with the
    signs fixed so that qr(U) = U for an orthonormal U. R is orthonormal after every optimizer step by construction
    (no d×d matrix is ever formed, unlike torch's orthogonal parametrization that pyreft uses, which keeps a d×d
    base), and weight decay on A cannot collapse it. The forward pass equals pyreft's LoreftIntervention for the
    same R, W, b; training dynamics differ (a different parametrization of the same manifold).
    Everything runs in the method's dtype (fp32; autocast off), whatever the model's dtype. Dropout acts on the whole output h + Δ, as
    in the paper's code; the activation (default identity) on W h + b.
    """

    def __init__(self, hidden_size: int, rank: int, dropout: float = 0.0, act_fn: str = "linear"):
        super().__init__()
        self.rotation = nn.Parameter(nn.init.orthogonal_(torch.empty(hidden_size, rank)))  # A [d, r]
        self.learned_source = nn.Linear(hidden_size, rank)  # W [r, d], b [r]
        self.dropout, self.act = nn.Dropout(dropout), ACTIVATIONS[act_fn]

    @property
    def R(self):
        """[r, d], orthonormal rows."""
        q, r = torch.linalg.qr(self.rotation)  # q [d, r]
        return (q * torch.sign(torch.diagonal(r)).masked_fill(torch.diagonal(r) == 0, 1.0)).T

    def forward(self, h):  # h [..., d] -> [..., d]
        with torch.autocast(h.device.type, enabled=False):
            hf, R = h.to(self.rotation.dtype), self.R  # the method's dtype: fp32 (fp64 in tests)
            delta = (self.act(self.learned_source(hf)) - hf @ R.T) @ R  # [..., r] @ [r, d]
            return self.dropout(hf + delta).to(h.dtype)


class DiReFT(nn.Module):
    """DiReFT, ReFT paper eq. (3):  Φ(h) = h + W₂ᵀ(W₁ h + b),  W₁, W₂ ∈ ℝ^{r×d}, no orthogonality
    (pyreft's NodireftIntervention; pyreft's `DireftIntervention` is a different, orthogonal variant).
    fp32 compute and dropout on the whole output, as for LoReFT."""

    def __init__(self, hidden_size: int, rank: int, dropout: float = 0.0, act_fn: str = "linear"):
        super().__init__()
        self.learned_source = nn.Linear(hidden_size, rank)  # W₁ [r, d], b [r]
        self.proj = nn.Parameter(torch.empty(rank, hidden_size))  # W₂ [r, d]
        nn.init.kaiming_uniform_(self.proj, a=5 ** 0.5)  # nn.Linear's default init, as pyreft's proj_layer
        self.dropout, self.act = nn.Dropout(dropout), ACTIVATIONS[act_fn]

    def forward(self, h):
        with torch.autocast(h.device.type, enabled=False):
            hf = h.to(self.proj.dtype)
            return self.dropout(hf + self.act(self.learned_source(hf)) @ self.proj).to(h.dtype)


class ReFT(Method):
    """LoReFT or DiReFT interventions after the chosen blocks, one per (layer, position group).

    positions: LongTensor [B, G, n] of token indices into the sequence of this forward call, G = num_groups
    (group 0 = first-A tokens, group 1 = last-B tokens when untied), -1 = empty slot. Built by data.reft_positions.
    """

    def __init__(self, kind: str, hidden_size: int, layers: list[int], rank: int, groups: int,
                 dropout: float = 0.0, act_fn: str = "linear"):
        super().__init__()
        cls = {"loreft": LoReFT, "direft": DiReFT}[kind]
        self.layers, self.groups = list(layers), groups
        self.interventions = nn.ModuleDict({f"{l}_{g}": cls(hidden_size, rank, dropout, act_fn)
                                            for l in layers for g in range(groups)})

    def edit_residual(self, layer: int, h, positions):
        if f"{layer}_0" not in self.interventions:
            return h
        if positions.dim() != 3 or positions.shape[1] != self.groups:
            raise ValueError(f"positions must be [batch, {self.groups}, n] for this method, got "
                             f"{tuple(positions.shape)}")
        batch = torch.arange(h.shape[0], device=h.device)[:, None].expand(-1, positions.shape[2])  # [B, n]
        # a token listed twice in a group is edited once (as pyreft's write-back): later copies count as empty
        repeat = (positions[..., :, None] == positions[..., None, :]).tril(-1).any(-1)  # [B, G, n]
        valid = ((positions >= 0) & ~repeat)[..., None]  # [B, G, n, 1]
        positions = positions.clamp(min=0)  # empty slots point at token 0, with a zero delta below
        for g in range(self.groups):
            idx = positions[:, g]  # [B, n]
            rows = h[batch, idx]  # [B, n, d] (indexing, not gather: gather keeps all of h for its backward)
            delta = (self.interventions[f"{layer}_{g}"](rows) - rows) * valid[:, g]  # empty slots change nothing
            h = h.index_put((batch, idx), delta, accumulate=True)  # accumulate: a zero delta at token 0 is harmless
        return h


# -----------------------------------------------------------------------------------------------------------------
# Seam 2: prefix-tuning


class PrefixTuning(Method):
    """Prefix-tuning (Li & Liang, arXiv 2101.00190 §4): P learned keys and values per layer that every real token
    attends to; nothing is computed for the prefix positions. In layer ℓ, for every key/value head:
        K ← [K_prefix,ℓ ; K(x)],  V ← [V_prefix,ℓ ; V(x)]   (along the key axis: [B, H_kv, P + T, d_h])
    i.e. a learned initial KV cache, sized by the key/value heads (GQA: H_kv·d_h wide, as HF PEFT). model.py gives
    the real tokens RoPE positions P, P+1, ... and uses the prefix keys as stored, never rotated (as PEFT on HF
    LLaMA); the encoder keeps its own absolute positions and shows the prefix to every token.

    projection=False: one tensor `prefix` [L, 2, H_kv, P, d_h] (2 = keys, values), initialised N(0, 0.02²). This is
    our choice: small, so training starts near the base model (values ≈ 0 add ≈ nothing, keys ≈ 0 take a logit-0
    share of attention), but random, because with all-equal slots every slot gets the same gradient and they stay
    equal. PEFT's nn.Embedding default N(0, 1) puts O(1) keys and values into every layer at step 0.
    projection=True: the paper's reparametrization (§4.3; reference code gpt2/train_control.py), P_θ = MLP(P′):
        P′ [P, H_kv·d_h] ~ N(0, 1) -> Linear(H_kv·d_h, hidden) -> tanh -> Linear(hidden, L·2·H_kv·d_h)
    with PyTorch's default inits; output feature f = ((2ℓ + kv)·H_kv + head)·d_h + j (PEFT's layout). `fold()`
    replaces the MLP by its output, as the paper keeps only P_θ after training; `save` stores the folded prefix.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_virtual_tokens: int,
                 projection: bool = False, hidden: int = 512):
        super().__init__()
        L, H, P, d = num_layers, num_kv_heads, num_virtual_tokens, head_dim
        self.num_layers, self.num_virtual_tokens, self.kv_shape = L, P, (2, H, d)
        if projection:
            self.register_parameter("prefix", None)
            self.embedding = nn.Parameter(torch.randn(P, H * d))  # P′ [P, H_kv·d_h]
            self.mlp = nn.Sequential(nn.Linear(H * d, hidden), nn.Tanh(), nn.Linear(hidden, L * 2 * H * d))
        else:
            self.prefix = nn.Parameter(0.02 * torch.randn(L, 2, H, P, d))  # [L, 2, H_kv, P, d_h]
            self.embedding = self.mlp = None

    def layer_kv(self, layer: int):
        """Keys and values of one layer, [2, H_kv, P, d_h]."""
        if self.mlp is None:
            return self.prefix[layer]
        width = 2 * self.kv_shape[1] * self.kv_shape[2]  # this layer's rows of the last Linear: a contiguous block
        rows = slice(layer * width, (layer + 1) * width)
        out = F.linear(self.mlp[1](self.mlp[0](self.embedding)), self.mlp[2].weight[rows], self.mlp[2].bias[rows])
        return out.view(-1, *self.kv_shape).permute(1, 2, 0, 3)  # [P, 2, H_kv, d_h] -> [2, H_kv, P, d_h]

    def prefix_kv(self, layer: int, batch_size: int):
        kv = self.layer_kv(layer)  # [2, H_kv, P, d_h]
        return kv[0].expand(batch_size, -1, -1, -1), kv[1].expand(batch_size, -1, -1, -1)  # [B, H_kv, P, d_h], views

    @torch.no_grad()
    def fold(self) -> "PrefixTuning":
        """Replace the reparametrization by its output [L, 2, H_kv, P, d_h] (same numbers, same layer_kv path)."""
        if self.mlp is not None:
            self.prefix = nn.Parameter(torch.stack([self.layer_kv(l) for l in range(self.num_layers)]))
            self.embedding = self.mlp = None
        return self


# -----------------------------------------------------------------------------------------------------------------
# Seam 3: PEDRO

Scales = namedtuple("Scales", "q v u")  # seam 3's vectors, each [B, 1, width]: q_proj, v_proj, FFN up outputs


class RationalActivation(nn.Module):
    """The "safe" Padé activation unit of PAU (Molina et al., ICLR 2020; github ml-research/pau), degrees (5, 4):
        σ(x) = (a₀ + a₁x + … + a₅x⁵) / (1 + |b₁x| + |b₂x²| + |b₃x³| + |b₄x⁴|)
    The denominator is ≥ 1, so there are no poles; |·| has gradient 0 at 0, so σ'(0) = a₁ (finite). Initialised to
    our least-squares fit of leaky ReLU (slope 0.01) on [-3, 3] (L-BFGS on 2001 points, max error 0.03); PAU's default
    init is a leaky-ReLU fit too, its numbers are not copied. A GELU fit drives b₄ to exactly 0, where |b₄| gets no
    gradient and would stay 0 forever.
    """

    LEAKY_RELU_FIT = ((0.0298036, 0.618383, 2.3223, 3.04917, 1.48336, 0.250556), (1.14151, 4.38912, 0.8703, 0.346542))

    def __init__(self):
        super().__init__()
        self.numerator = nn.Parameter(torch.tensor(self.LEAKY_RELU_FIT[0]))  # a₀ .. a₅
        self.denominator = nn.Parameter(torch.tensor(self.LEAKY_RELU_FIT[1]))  # b₁ .. b₄

    def forward(self, x):
        a, b, ax = self.numerator.to(x.dtype), self.denominator.to(x.dtype).abs(), x.abs()
        num = a[5]
        for k in range(4, -1, -1):  # Horner's rule
            num = num * x + a[k]
        den = b[3] * ax
        for k in range(2, -1, -1):
            den = (den + b[k]) * ax  # ends as |b₁||x| + |b₂||x|² + |b₃||x|³ + |b₄||x|⁴
        return num / (1 + den)


class PEDRO(Method):
    """PEDRO (Xie et al., arXiv 2409.17834): prompt-dependent (IA)³-style scales. In each chosen layer ℓ a vector
    generator reads the layer's hidden states X [B, T, d] and the prompt mask m [B, T]:
        g = pool(X, m) [B, d],   z = W_up σ(W_down g + b_down) + b_up,   [l_q, l_v, l_u] = 1 + z
        q = l_q ⊙ q_proj(x),   v = l_v ⊙ v_proj(x),   FFN = down(act(gate(x)) ⊙ (l_u ⊙ up(x)))
    with σ a learnable rational activation per layer. The vectors depend on the prompt only (m is 1 on prompt tokens,
    0 on padding and response tokens) and scale every position. In generation they are computed at prefill, kept in
    the KVCache (`cache.scales[ℓ]`) and reused at every decode step, so decoding costs one multiply per scale.

    Published (methods.md §5.1): one generator per layer, pooler -> down -> activation -> up; a rational activation
    learned by bi-level optimisation; l_q, l_v, l_u on Q, V and the FFN up state. Our choices (§5.2/5.3, unpublished):
    - generator input: the post-input_layernorm states the q/k/v projections see (decoder); the encoder layer's
      input, already layer-normed there (post-LN).
    - pooling: "last" = last prompt token (in a causal model the only one that has read the whole prompt); "first"
      = first token (an encoder's <s>/[CLS], which its classifier reads; build_method uses it when "last" is asked
      of an encoder); "mean" = masked mean of the prompt tokens. prompt_mask None counts every token as prompt.
    - bottleneck width = rank (methods.md §5.3 infers 12 from PARA's ≈8.9 M on LLaMA-2-7B); biases on both Linears.
    - q is scaled before RoPE (PEFT's IA³ on q_proj does the same; RoPE mixes pairs of features, so the order
      matters unless l_q is equal within each rotated pair).
    - init: W_up, b_up = 0, so l ≡ 1 and training starts exactly at the base model ((IA)³'s ones); W_down, b_down
      nn.Linear's defaults; σ a leaky-ReLU fit (RationalActivation).
    - NOT implemented: the bi-level optimisation. The rational coefficients train jointly with everything else,
      on the same data and by the same optimizer.
    The generator runs in its own dtype (fp32), autocast off; the vectors are cast to the model's dtype.
    """

    def __init__(self, layers: list[int], hidden_size: int, q_width: int, v_width: int, u_width: int, rank: int,
                 pooling: str = "last"):
        super().__init__()
        if pooling not in ("last", "first", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}: expected last, first or mean")
        self.layers, self.pooling, self.widths = list(layers), pooling, (q_width, v_width, u_width)
        self.generators = nn.ModuleDict()
        for l in self.layers:
            up = nn.Linear(rank, q_width + v_width + u_width)
            nn.init.zeros_(up.weight)  # l = 1 + z ≡ 1: the base model at init
            nn.init.zeros_(up.bias)
            self.generators[str(l)] = nn.Sequential(nn.Linear(hidden_size, rank), RationalActivation(), up)

    def pool(self, x, prompt_mask):
        """x [B, T, d], prompt_mask [B, T] (1 = prompt token) or None -> [B, d]."""
        B, T, _ = x.shape
        m = torch.ones(B, T, device=x.device) if prompt_mask is None else (prompt_mask > 0).to(x.dtype)
        if self.pooling == "mean":
            return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        rank = torch.arange(1, T + 1, device=x.device)  # argmax of m·rank = the last prompt token of each row
        idx = (m * (rank if self.pooling == "last" else rank.flip(0))).argmax(1)  # [B]
        return x[torch.arange(B, device=x.device), idx]

    def scales(self, layer: int, x, prompt_mask, cache):
        if str(layer) not in self.generators:
            return None
        if cache is not None and layer in cache.scales:  # decode step: reuse the vectors of the prompt (prefill)
            return cache.scales[layer]
        generator = self.generators[str(layer)]
        with torch.autocast(x.device.type, enabled=False):
            z = generator(self.pool(x.to(generator[0].weight.dtype), prompt_mask))  # [B, q + v + u]
        s = Scales(*((1 + t)[:, None].to(x.dtype) for t in z.split(self.widths, -1)))  # each [B, 1, width]
        if cache is not None:
            cache.scales[layer] = s
        return s


# -----------------------------------------------------------------------------------------------------------------
# Building, counting, saving and loading a method


@dataclass
class MethodConfig:
    method: str = "loreft"  # loreft | direft | prefix | pedro
    layers: list[int] = field(default_factory=list)  # block indices the method acts on (resolved, 0-based)
    positions: str = "f1+l1"  # ReFT: first A and last B prompt tokens
    share_weights: bool = False  # ReFT: one intervention for both position groups (the paper's "tied")
    rank: int = 4  # ReFT: rank r of the subspace; PEDRO: bottleneck width of the vector generator
    dropout: float = 0.0  # ReFT: dropout on the intervention output
    act_fn: str = "linear"  # ReFT: activation on W h + b
    num_virtual_tokens: int = 8  # prefix-tuning: P
    prefix_projection: bool = False  # prefix-tuning: train through the paper's Embedding -> MLP(tanh) reparametrization
    prefix_hidden_size: int = 512  # prefix-tuning: the MLP's width
    pooling: str = "last"  # PEDRO: prompt pooling, last | first | mean ("last" on an encoder = its first token)


def parse_layers(spec, num_layers: int) -> list[int]:
    """ "all" -> [0 .. L-1]; "0,2,4" or [0, 2, 4] -> checked indices."""
    if spec == "all":
        return list(range(num_layers))
    try:
        layers = [int(x) for x in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise ValueError(f"bad layers {spec!r}: expected 'all' or comma-separated indices like 0,2,4") from None
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad or not layers or len(set(layers)) != len(layers):
        raise ValueError(f"bad layers {spec!r}: indices must be distinct and in 0..{num_layers - 1} "
                         f"(the model has {num_layers} layers)")
    return sorted(layers)


def build_method(cfg: MethodConfig, model) -> Method:
    """A freshly initialised method for `model` (a model.Llama or model.Encoder), on the model's device."""
    mc = model.config
    if cfg.method in ("loreft", "direft"):
        if cfg.rank <= 0:
            raise ValueError(f"rank must be positive, got {cfg.rank}")
        if cfg.act_fn not in ACTIVATIONS:
            raise ValueError(f"unknown act_fn {cfg.act_fn!r}: expected one of {', '.join(ACTIVATIONS)}")
        first, last = parse_positions(cfg.positions)
        m = ReFT(cfg.method, mc.hidden_size, cfg.layers, cfg.rank, num_groups(first, last, cfg.share_weights),
                 cfg.dropout, cfg.act_fn)
    elif cfg.method in ("prefix", "pedro"):
        n_kv = getattr(mc, "num_key_value_heads", mc.num_attention_heads)  # EncoderConfig: no GQA, no head_dim
        head_dim = getattr(mc, "head_dim", mc.hidden_size // mc.num_attention_heads)
        if cfg.method == "prefix":
            if cfg.num_virtual_tokens <= 0:
                raise ValueError(f"num_virtual_tokens must be positive, got {cfg.num_virtual_tokens}")
            m = PrefixTuning(mc.num_hidden_layers, n_kv, head_dim, cfg.num_virtual_tokens, cfg.prefix_projection,
                             cfg.prefix_hidden_size)
        else:
            if cfg.rank <= 0:
                raise ValueError(f"rank must be positive, got {cfg.rank}")
            encoder = mc.model_type in ("roberta", "bert")  # summarises in its first token, <s> / [CLS]
            pooling = "first" if encoder and cfg.pooling == "last" else cfg.pooling
            m = PEDRO(parse_layers(cfg.layers, mc.num_hidden_layers), mc.hidden_size, mc.num_attention_heads * head_dim,
                      n_kv * head_dim, mc.intermediate_size, cfg.rank, pooling)
    else:
        raise ValueError(f"unknown method {cfg.method!r}: expected loreft, direft, prefix or pedro")
    return m.to(next(model.parameters()).device)


def count_parameters(method: nn.Module, model: nn.Module) -> str:
    """'trainable params: 1,234 || all params: 260,864 || trainable%: 0.4730' (the % is over the base, as the
    ReFT paper reports it)."""
    n = sum(p.numel() for p in method.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable params: {n:,} || base params: {total:,} || trainable%: {100 * n / total:.4f}"


def base_fingerprint(model) -> dict:
    """What identifies the base model a method was trained on: its shape and a checksum of the embeddings."""
    mc = model.config
    emb = (model.embed_tokens if hasattr(model, "embed_tokens") else model.word_embeddings).weight
    return {"model_type": mc.model_type, "hidden_size": mc.hidden_size, "num_hidden_layers": mc.num_hidden_layers,
            "vocab_size": mc.vocab_size, "embedding_checksum": float(emb.detach().double().abs().sum())}


def atomic_torch_save(obj, path: str):
    """Write to a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(folder: str, method: Method, cfg: MethodConfig, model, extra: dict | None = None):
    """folder/reft.pt: {config, base fingerprint, the method's weights (+ extra, e.g. a classifier head)}; also a
    readable folder/reft_config.json."""
    if isinstance(method, PrefixTuning) and method.mlp is not None:  # keep only P_θ (Li & Liang §4.3), as PEFT
        method, cfg = deepcopy(method).fold(), replace(cfg, prefix_projection=False)
    state = {k: v.detach().cpu() for k, v in method.state_dict().items()}
    blob = {"config": asdict(cfg), "base": base_fingerprint(model), "state_dict": state, **(extra or {})}
    atomic_torch_save(blob, os.path.join(folder, "reft.pt"))
    with open(os.path.join(folder, "reft_config.json.tmp"), "w") as f:
        json.dump({"config": asdict(cfg), "base": blob["base"]}, f, indent=2)
    os.replace(os.path.join(folder, "reft_config.json.tmp"), os.path.join(folder, "reft_config.json"))


def load(folder: str, model) -> tuple[Method, MethodConfig, dict]:
    """Rebuild a saved method on `model` (ours: reft.pt); returns (method, config, the whole saved blob)."""
    path = os.path.join(folder, "reft.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no reft.pt (a folder written by train.py --out); for a pyreft folder "
                                "(config.json + intkey_*.bin) pass --positions as well")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    base, mine = blob["base"], base_fingerprint(model)
    for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if base[k] != mine[k]:
            raise ValueError(f"{folder} was trained on a different base model: {k} {base[k]} there, {mine[k]} here")
    if abs(base["embedding_checksum"] - mine["embedding_checksum"]) > 1e-3 * abs(base["embedding_checksum"]):
        raise ValueError(f"{folder} was trained on a different base model (embedding weights differ)")
    cfg = MethodConfig(**blob["config"])
    method = build_method(cfg, model)
    method.load_state_dict(blob["state_dict"])
    return method, cfg, blob


# -----------------------------------------------------------------------------------------------------------------
# Importing a folder saved by pyreft (ReftModel.save: config.json + intkey_<key>.bin), LLaMA "block_output" only.

PYREFT_KINDS = {"LoreftIntervention": "loreft", "NodireftIntervention": "direft"}  # pyreft class -> our method
_PYVENE_FIELDS = ("layer", "component", "unit", "max_number_of_units", "low_rank_dimension", "intervention_type",
                  "intervention", "subspace_partition", "group_key", "intervention_link_key", "moe_key",
                  "source_representation", "hidden_source_representation", "latent_dim")  # pyvene RepresentationConfig


def _pyreft_representations(cfg: dict, folder: str) -> list[dict]:
    """The representations of a pyvene IntervenableConfig as dicts (saved as lists in field order, or as dicts)."""
    reps = cfg.get("representations")
    if not isinstance(reps, list) or not reps:
        raise ValueError(f"{folder}/config.json has no 'representations' list: not a pyreft intervention folder")
    out = []
    for r in reps:
        if isinstance(r, dict):
            out.append({f: r.get(f) for f in _PYVENE_FIELDS})
        elif isinstance(r, list):
            out.append(dict(zip(_PYVENE_FIELDS, r + [None] * (len(_PYVENE_FIELDS) - len(r)))))
        else:
            raise ValueError(f"{folder}/config.json: representation {r!r} is neither a list nor a dict")
    return out


def load_pyreft(folder: str, model, positions: str) -> tuple[Method, MethodConfig]:
    """Load interventions saved by pyreft's `ReftModel.save(folder)` onto our `model` (a model.Llama).

    Supported: `LoreftIntervention` (-> LoReFT) and `NodireftIntervention` (paper DiReFT, -> DiReFT), component
    "block_output" (the residual stream after block `layer`, our seam 1), unit "pos". pyreft does not save the
    positions, so `positions` ("f1+l1", "f3", ...) must be given; it decides the layout:
      fA+lB untied: every layer appears twice; the first half of the representations is the first-A group (key
        #0 on its layer), the second half the last-B group (#1), as pyreft's training scripts lay them out;
      fA+lB tied (share_weights), fA, lB: every layer appears once, one group.
    State dicts: LoReFT {weight W [r,d], bias b [r], rotate_layer U [d,r]} -> learned_source = (W, b), rotation
    A = U (our R = qr(A).Qᵀ with signs fixed, which is Uᵀ for an orthonormal U); Nodireft {learned_source.weight,
    learned_source.bias, proj_layer.weight W₂} -> learned_source, proj = W₂ (proj_layer.bias is unused by pyreft's
    forward and dropped). pyreft does not save dropout or act_fn: they come back as 0.0 and "linear" (as
    pyreft's own loader does). Returns (method, config); save it in our format with `save`.
    """
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        hint = " (it has reft.pt: load it with reft.load)" if os.path.exists(os.path.join(folder, "reft.pt")) else ""
        raise FileNotFoundError(f"{folder}: neither reft.pt (saved by this project) nor a pyreft config.json "
                                f"(+ intkey_*.bin, saved by ReftModel.save){hint}")
    with open(cfg_path) as f:
        cfg = json.load(f)
    reps = _pyreft_representations(cfg, folder)
    mc = model.config
    if getattr(mc, "model_type", None) != "llama":
        raise ValueError(f"pyreft import supports LLaMA models only (component 'block_output'), "
                         f"not {getattr(mc, 'model_type', type(model).__name__)!r}")
    types = cfg.get("intervention_types")
    types = [types] * len(reps) if isinstance(types, str) else list(types or [])
    if len(types) != len(reps):
        raise ValueError(f"{cfg_path}: {len(types)} intervention_types for {len(reps)} representations")
    names = {re.sub(r"^<class '(.*)'>$", r"\1", str(t)).rsplit(".", 1)[-1] for t in types}
    bad = sorted(n for n in names if n not in PYREFT_KINDS)
    if bad:
        raise ValueError(f"{folder}: pyreft intervention type {bad[0]} is not supported (supported: "
                         f"{', '.join(PYREFT_KINDS)}; pyreft's DireftIntervention is not paper DiReFT)")
    if len(names) != 1:
        raise ValueError(f"{folder} mixes intervention types {sorted(names)}: one type per method is supported")
    kind = PYREFT_KINDS[names.pop()]
    for r in reps:
        if r["component"] != "block_output" or r["unit"] != "pos":
            raise ValueError(f"{folder}: pyreft component {r['component']!r} (unit {r['unit']!r}) is not supported "
                             "(supported: component 'block_output', unit 'pos', on a LLaMA model)")
        if not isinstance(r["layer"], int) or not 0 <= r["layer"] < mc.num_hidden_layers:
            raise ValueError(f"{folder}: intervention on layer {r['layer']!r}, but the model has "
                             f"{mc.num_hidden_layers} layers (a different base model?)")
    dims = {d for d in (cfg.get("intervention_dimensions") or []) if d is not None}
    if dims and dims != {mc.hidden_size}:
        raise ValueError(f"{folder}: interventions of hidden size {sorted(dims)[0]}, the model has "
                         f"{mc.hidden_size} (a different base model?)")

    # positions -> groups; each representation i goes to (layer, group)
    first, last = parse_positions(positions)
    layers = [r["layer"] for r in reps]
    once = len(set(layers)) == len(layers)
    half = len(reps) // 2
    twice = len(reps) % 2 == 0 and len(set(layers[:half])) == half and set(layers[:half]) == set(layers[half:])
    if first and last and twice and not once:
        share, slots = False, [(l, 0) for l in layers[:half]] + [(l, 1) for l in layers[half:]]
    elif once:
        share, slots = bool(first and last), [(l, 0) for l in layers]
    else:
        want = "one intervention per layer" if not (first and last) else \
            "one (tied) or two (untied, first half of the list = first-A group) interventions per layer"
        raise ValueError(f"positions {positions!r} needs {want}, but {folder} has interventions on layers "
                         f"{layers}; pass the positions it was trained with (e.g. f1+l1 for untied pairs)")

    # state dicts, in our layout
    counter, states = {}, []
    for r in reps:
        proposal = f"layer_{r['layer']}_comp_{r['component']}_unit_{r['unit']}_nunit_{r['max_number_of_units']}"
        counter[proposal] = counter.get(proposal, -1) + 1
        path = os.path.join(folder, f"intkey_{proposal}#{counter[proposal]}.bin")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found (pyreft saves one intkey_<key>.bin per intervention; "
                                    f"present: {sorted(n for n in os.listdir(folder) if n.endswith('.bin'))})")
        states.append(torch.load(path, map_location="cpu", weights_only=True))
    need = {"loreft": ("weight", "bias", "rotate_layer"),
            "direft": ("learned_source.weight", "learned_source.bias", "proj_layer.weight")}[kind]
    ranks = set()
    for r, sd in zip(reps, states):
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"{folder}: the {kind} intervention on layer {r['layer']} lacks {missing} (has "
                             f"{sorted(sd)}); expected pyreft's {'/'.join(need)}")
        w = sd[need[0]]
        ranks.add(w.shape[0])
        if w.dim() != 2 or w.shape[1] != mc.hidden_size:
            raise ValueError(f"{folder}: interventions of hidden size {w.shape[-1]}, the model has "
                             f"{mc.hidden_size} (a different base model?)")
        if r["low_rank_dimension"] is not None and r["low_rank_dimension"] != w.shape[0]:
            raise ValueError(f"{folder}: config says rank {r['low_rank_dimension']}, the weights have {w.shape[0]}")
    if len(ranks) != 1:
        raise ValueError(f"{folder} mixes ranks {sorted(ranks)}: one rank per method is supported")

    mcfg = MethodConfig(method=kind, layers=sorted(set(layers)), positions=positions, share_weights=share,
                        rank=ranks.pop())
    method = build_method(mcfg, model)
    with torch.no_grad():
        for (layer, g), r, sd in zip(slots, reps, states):
            iv = method.interventions[f"{layer}_{g}"]
            if kind == "loreft":
                U = sd["rotate_layer"].float()
                err = float((U.T @ U - torch.eye(U.shape[1])).abs().max())
                if err > (1e-4 if sd["rotate_layer"].dtype in (torch.float32, torch.float64) else 2e-2):
                    raise ValueError(f"{folder}: rotate_layer of layer {r['layer']} is not orthonormal "
                                     f"(max |UᵀU − I| = {err:.1e})")
                iv.rotation.copy_(U)
                iv.learned_source.weight.copy_(sd["weight"])
                iv.learned_source.bias.copy_(sd["bias"])
            else:
                iv.learned_source.weight.copy_(sd["learned_source.weight"])
                iv.learned_source.bias.copy_(sd["learned_source.bias"])
                iv.proj.copy_(sd["proj_layer.weight"])
    return method, mcfg
