"""
reft.py: the four methods and the LoRA baseline, each a plain nn.Module that model.py calls at its seams (model.py's
docstring lists them in the order a block meets them; `Method` below gives each one's default, which changes nothing).

  PEDRO (Xie et al., arXiv 2409.17834)                 -> seams 1, 2, 4: reads the block's input, scales q, v and the
                                                          FFN's up state by prompt-dependent vectors
  LoRA (Hu et al., arXiv 2106.09685), the baseline      -> seam 2: low-rank updates W + (α/r)·B A of q/k/v projections
  PrefixTuning (Li & Liang, arXiv 2101.00190)          -> seam 3: learned keys/values inside every attention
  LoReFT, DiReFT (ReFT paper, arXiv 2404.03592 §3.2)  -> seam 5: the residual stream after chosen blocks, at chosen
                                                          prompt positions ("fA+lB", below), edited once at prefill

A method is passed to the model's forward (`model(ids, mask, method=m, positions=p)`); the base model stays frozen
and only the method trains. Read top to bottom: the seam interface, the position rule, the methods, building one
(saving and loading: support/saving.py; the pyreft import: support/pyreft_import.py).
"""
import re
from collections import namedtuple
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

ACTIVATIONS = {"linear": lambda x: x, "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


class Method(nn.Module):
    """The seams model.py calls, in the order a block meets them; a method overrides those it acts at, these defaults
    change nothing. One seam per place some method edits: LoRA and PEDRO share the projection seam."""

    num_virtual_tokens = 0  # keys a method puts before the real tokens (prefix-tuning's P); model.py counts them

    def block_input(self, layer: int, h, prompt_mask, cache):  # seam 1: the block's normed input h [B, T, d]
        return None  # -> ctx, handed back to this block's seams 2 and 4 (PEDRO: its vectors)

    def project(self, layer: int, name: str, x, y, ctx):  # seam 2: y [B, T, out] = projection `name` (q, k, v) of x
        return y

    def extra_kv(self, layer: int, k, v):  # seam 3: keys/values [B, H_kv, T, d_h] at prefill -> [B, H_kv, S, d_h]
        return k, v

    def ffn_hidden(self, layer: int, gate, up, act, ctx):  # seam 4: the FFN's hidden state, [B, T, d_ff]
        return act(gate) * up if gate is not None else act(up)  # gated (LLaMA: silu(gate) ⊙ up); plain (BERT)

    def residual(self, layer: int, h, positions):  # seam 5: the residual stream after block `layer`, h [B, T, d]
        return h


# -----------------------------------------------------------------------------------------------------------------
# Positions: "fA+lB" = the first A and the last B prompt tokens (ReFT §4.1). This is the whole rule; data.collate
# calls PositionScheme.of for every example, and the ReFT class below reads the tensor it makes.


def parse_positions(spec: str) -> tuple[int, int]:
    """ "f7+l7" -> (7, 7); "f3" -> (3, 0); "l1" -> (0, 1)."""
    m = re.fullmatch(r"f(\d+)\+l(\d+)|f(\d+)|l(\d+)", spec.strip())
    if m is None:
        hint = " (write f3+l3: the + is required)" if re.fullmatch(r"f\d+l\d+", spec.strip()) else ""
        raise ValueError(f"bad positions {spec!r}: expected fA+lB, fA or lB (e.g. f1+l1, f3, l1){hint}")
    first, last = int(m.group(1) or m.group(3) or 0), int(m.group(2) or m.group(4) or 0)
    if first + last == 0:
        raise ValueError(f"bad positions {spec!r}: at least one position is needed")
    return first, last


def num_groups(first: int, last: int, share_weights: bool) -> int:
    """Untied weights (the default for fA+lB) give one intervention for the first-A group and one for the last-B
    group on every layer (pyreft's reading of "untied"); tied weights, fA or lB alone, give one group."""
    return 2 if first and last and not share_weights else 1


def reft_positions(prompt_len: int, first: int, last: int, share_weights: bool, offset: int = 0) -> torch.Tensor:
    """The "fA+lB" positions of one prompt of n = prompt_len tokens as a LongTensor [G, slots], -1 = empty slot.

    Short prompts (ReFT §4.1, rule "paper"): A <- min(A, floor(n/2)), B <- min(B, ceil(n/2)), so the two groups
    never overlap; the freed slots stay empty (-1), the paper's "no truncated interventions".
    Groups: untied (share_weights False, A and B > 0): G = 2, [first-A group, last-B group], each max(A, B) slots;
    otherwise G = 1 with A + B slots. `offset` shifts every index (left padding puts the prompt at `offset`).

    Worked examples:
        n 10, f2+l2 untied           -> [[0, 1], [8, 9]]
        n 10, f2+l2 tied             -> [[0, 1, 8, 9]]
        n 5,  f2+l2 untied, offset 3 -> [[3, 4], [6, 7]]      (three pad tokens on the left)
        n 3,  f2+l2 untied           -> [[0, -1], [1, 2]]     (A = min(2, 1) = 1, B = min(2, 2) = 2)
        n 4,  f3                     -> [[0, 1, -1]]          (A = min(3, 2))
    """
    ### BEGIN SOLUTION positions
    a, b = min(first, prompt_len // 2), min(last, (prompt_len + 1) // 2)
    head = [offset + i for i in range(a)]  # the first a prompt tokens
    tail = [offset + prompt_len - b + i for i in range(b)]  # the last b prompt tokens
    if num_groups(first, last, share_weights) == 1:
        groups = [head + tail + [-1] * (first + last - a - b)]
    else:
        n = max(first, last)
        groups = [head + [-1] * (n - a), tail + [-1] * (n - b)]
    return torch.tensor(groups, dtype=torch.long)
    ### END SOLUTION positions


# Short-prompt rules by name; support/saving.py adds "legacy", the rule of runs saved by earlier versions.
POSITION_RULES = {"paper": reft_positions}


@dataclass(frozen=True)
class PositionScheme:
    """A parsed "fA+lB" with its weight sharing and short-prompt rule: what data.collate needs to place edits."""
    first: int
    last: int
    share_weights: bool = False
    rule: str = "paper"  # a name in POSITION_RULES: "paper" (reft_positions), or a loaded old run's "legacy"

    def of(self, prompt_len: int, offset: int = 0) -> torch.Tensor:  # -> [G, slots]
        return POSITION_RULES[self.rule](prompt_len, self.first, self.last, self.share_weights, offset)


# -----------------------------------------------------------------------------------------------------------------
# Seam 5: LoReFT and DiReFT


class LoReFT(nn.Module):
    """LoReFT, ReFT paper eq. (2):  Φ(h) = h + Rᵀ(W h + b − R h),  R ∈ ℝ^{r×d} with orthonormal rows.

    Rh are h's coordinates in an r-dimensional subspace; LoReFT replaces them by the learned W h + b and leaves h
    unchanged outside the subspace: R Φ(h) = W h + b and (I − RᵀR)(Φ(h) − h) = 0.
    R is not stored: it is the Q factor of a QR decomposition of a free matrix A ∈ ℝ^{d×r}, R = qr(A).Qᵀ, with signs
    fixed so that qr(U) = U for an orthonormal U. So R is orthonormal after every optimizer step, no d×d matrix is
    formed (pyreft uses torch's orthogonal parametrization, which keeps a d×d base per intervention) and weight decay
    on A cannot collapse it. The forward equals pyreft's LoreftIntervention for the same R, W, b; training dynamics
    differ. rotation="householder" keeps pyreft's (docs/reference.md, --rotation): R = Uᵀ,
    U = base·Householder(reflectors) [d, r] with a d×d fp32 base buffer (benchmarks/README.md compares the two).
    Computes in fp32 (autocast off), returns h's dtype; dropout acts on the whole output h + Δ, as the paper's code;
    the activation (default identity) on W h + b.
    """

    def __init__(self, hidden_size: int, rank: int, dropout: float = 0.0, act_fn: str = "linear", rotation: str = "qr"):
        super().__init__()
        if rotation == "householder":  # as pyreft: U [d, r] initialised orthogonal, then torch's parametrization
            self.U = nn.Parameter(nn.init.orthogonal_(torch.empty(hidden_size, rank)))
            nn.utils.parametrizations.orthogonal(self, "U")  # trains reflectors [d, r] (init −I); base [d, d] fixed
        else:
            self.A = nn.Parameter(nn.init.orthogonal_(torch.empty(hidden_size, rank)))  # free [d, r]; R = qr(A).Qᵀ
        self.W = nn.Linear(hidden_size, rank)  # W [r, d] and b [r]
        self.rotation, self.dropout, self.act = rotation, nn.Dropout(dropout), ACTIVATIONS[act_fn]

    @property
    def R(self):
        """[r, d], orthonormal rows."""
        if self.rotation == "householder":
            return self.U.T  # U: computed by the parametrization at every access
        ### BEGIN SOLUTION loreft
        Q, upper = torch.linalg.qr(self.A)  # Q [d, r] orthonormal columns, upper [r, r] upper triangular
        sign = torch.sign(torch.diagonal(upper)).masked_fill(torch.diagonal(upper) == 0, 1.0)  # unique: diag > 0
        return (Q * sign).T
        ### END SOLUTION loreft

    def forward(self, h):  # h [..., d] -> Φ(h) [..., d]
        with torch.autocast(h.device.type, enabled=False):
            hf = h.to(self.W.weight.dtype)  # the method's dtype: fp32 (fp64 in tests)
            ### BEGIN SOLUTION loreft
            R = self.R  # [r, d]
            delta = (self.act(self.W(hf)) - hf @ R.T) @ R  # (W h + b − R h) [..., r] @ R [r, d]
            return self.dropout(hf + delta).to(h.dtype)
            ### END SOLUTION loreft


class DiReFT(nn.Module):
    """DiReFT, ReFT paper eq. (3):  Φ(h) = h + W₂ᵀ(W₁ h + b),  W₁, W₂ ∈ ℝ^{r×d}, no orthogonality, no −Rh
    ("LoRA on the hidden states"; pyreft's NodireftIntervention; pyreft's `DireftIntervention` is another, orthogonal
    variant). fp32 compute and dropout on the whole output, as LoReFT; W₂ starts as nn.Linear's init (pyreft's)."""

    def __init__(self, hidden_size: int, rank: int, dropout: float = 0.0, act_fn: str = "linear"):
        super().__init__()
        self.W2 = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(rank, hidden_size), a=5 ** 0.5))  # W₂ [r, d]
        self.W1 = nn.Linear(hidden_size, rank)  # W₁ [r, d] and b [r]
        self.dropout, self.act = nn.Dropout(dropout), ACTIVATIONS[act_fn]

    def forward(self, h):  # h [..., d] -> Φ(h) [..., d]
        with torch.autocast(h.device.type, enabled=False):
            hf = h.to(self.W2.dtype)
            ### BEGIN SOLUTION direft
            return self.dropout(hf + self.act(self.W1(hf)) @ self.W2).to(h.dtype)  # [..., r] @ [r, d]
            ### END SOLUTION direft


class ReFT(Method):
    """LoReFT or DiReFT interventions after the chosen blocks, one per (layer, position group).

    positions: LongTensor [B, G, slots] of token indices into this forward call's sequence, made by
    PositionScheme.of (group 0 = first-A tokens, group 1 = last-B tokens when untied), -1 = empty slot.
    """

    def __init__(self, kind: str, hidden_size: int, layers: list[int], rank: int, groups: int,
                 dropout: float = 0.0, act_fn: str = "linear", rotation: str = "qr"):
        super().__init__()
        cls = {"loreft": lambda *a: LoReFT(*a, rotation=rotation), "direft": DiReFT}[kind]  # rotation: LoReFT's R
        self.layers, self.groups = list(layers), groups
        self.interventions = nn.ModuleDict({f"{l}_{g}": cls(hidden_size, rank, dropout, act_fn)
                                            for l in layers for g in range(groups)})

    def residual(self, layer: int, h, positions):
        """h [B, T, d] with Φ written at each group's positions (once per token: a token listed twice in a group,
        or an empty slot, is skipped)."""
        if f"{layer}_0" not in self.interventions:
            return h
        if positions.dim() != 3 or positions.shape[1] != self.groups:
            raise ValueError(f"positions must be [batch, {self.groups}, slots] for this method, got "
                             f"{tuple(positions.shape)}")
        B, G, n = positions.shape
        batch = torch.arange(B, device=h.device)[:, None].expand(B, n)  # [B, n]: row index of every slot
        earlier = (positions[..., :, None] == positions[..., None, :]).tril(-1).any(-1)  # [B, G, n] listed before
        keep = (positions >= 0) & ~earlier  # [B, G, n]: the slots to write
        for g in range(G):
            b, t = batch[keep[:, g]], positions[:, g][keep[:, g]]  # [k] row and token of each kept slot
            rows = h[b, t]  # [k, d] (indexing, not gather: gather would keep all of h for its backward)
            h = h.index_put((b, t), self.interventions[f"{layer}_{g}"](rows))  # Φ(h) written once, in h's dtype
        return h


# -----------------------------------------------------------------------------------------------------------------
# Seam 3: prefix-tuning


class PrefixTuning(Method):
    """Prefix-tuning (Li & Liang, arXiv 2101.00190 §4): P learned keys and values per layer that every real token
    attends to; nothing is computed for the prefix positions. In layer ℓ, for every key/value head:
        K ← [K_prefix,ℓ ; K(x)],  V ← [V_prefix,ℓ ; V(x)]   (along the key axis: [B, H_kv, P + T, d_h])
    i.e. a learned initial KV cache, sized by the key/value heads (GQA: H_kv·d_h wide, as HF PEFT). model.py gives
    the real tokens RoPE positions P, P+1, ... (num_virtual_tokens) and the prefix keys enter as stored, never
    rotated (as PEFT on HF LLaMA); the encoder keeps its own absolute positions and shows the prefix to every token.

    projection=False: one tensor `prefix` [L, 2, H_kv, P, d_h] (2 = keys, values) ~ N(0, 0.02²), our choice: small, so
    training starts near the base model, but random, as equal slots would get equal gradients and stay equal (PEFT's
    nn.Embedding default N(0, 1) puts O(1) keys and values into every layer at step 0).
    projection=True: the paper's reparametrization (§4.3; reference code gpt2/train_control.py), P_θ = MLP(P′):
        P′ [P, H_kv·d_h] ~ N(0, 1) -> Linear(H_kv·d_h, hidden) -> tanh -> Linear(hidden, L·2·H_kv·d_h)
    with PyTorch's default inits; output feature f = ((2ℓ + kv)·H_kv + head)·d_h + j (PEFT's layout). `fold()`
    replaces the MLP by its output, as the paper keeps only P_θ after training; saving stores the folded prefix.
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

    def extra_kv(self, layer: int, k, v):
        """Seam 3: k, v [B, H_kv, T, d_h] -> [B, H_kv, P + T, d_h], layer ℓ's P keys and values first, unrotated."""
        ### BEGIN SOLUTION prefix
        kv = self.layer_kv(layer)  # [2, H_kv, P, d_h]
        B = k.shape[0]
        pk, pv = kv[0].expand(B, -1, -1, -1), kv[1].expand(B, -1, -1, -1)  # [B, H_kv, P, d_h] each, views
        return torch.cat([pk.to(k.dtype), k], 2), torch.cat([pv.to(v.dtype), v], 2)
        ### END SOLUTION prefix

    @torch.no_grad()
    def fold(self) -> "PrefixTuning":
        """Replace the reparametrization by its output [L, 2, H_kv, P, d_h] (same numbers, same layer_kv path)."""
        if self.mlp is not None:
            self.prefix = nn.Parameter(torch.stack([self.layer_kv(l) for l in range(self.num_layers)]))
            self.embedding = self.mlp = None
        return self


# -----------------------------------------------------------------------------------------------------------------
# Seams 1, 2 and 4: PEDRO

Scales = namedtuple("Scales", "q v u")  # PEDRO's vectors, each [B, 1, width] fp32: for q_proj, v_proj, FFN up outputs


def recompute_in_backward(fn, *args):
    """fn(*args), recomputed in the backward (torch.utils.checkpoint) instead of keeping the [B, T, d_ff] state it
    makes: its inputs are what the frozen model keeps anyway, so PEDRO's FFN scale costs no activation memory."""
    return checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args)


class RationalActivation(nn.Module):
    """The "safe" Padé activation unit of PAU (Molina et al., ICLR 2020; github ml-research/pau), degrees (5, 4):
        σ(x) = (a₀ + a₁x + … + a₅x⁵) / (1 + |b₁x| + |b₂x²| + |b₃x³| + |b₄x⁴|)
    The denominator is ≥ 1, so there are no poles; σ'(0) = a₁ is finite. Initialised to our least-squares fit of leaky
    ReLU (slope 0.01) on [-3, 3] (max error 0.03), as PAU also starts; a GELU fit would set b₄ = 0, where |b₄| has no
    gradient."""

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
    0 on padding and response tokens) and scale every position: computed at seam 1 (block_input, at prefill; kept
    in `cache.method_state[ℓ]` for decode steps), applied at seams 2 (project: q, v) and 4 (ffn_hidden: up).

    What the paper specifies: one generator per layer, pooler -> down -> activation -> up; a rational activation
    learned by bi-level optimisation; l_q, l_v, l_u on Q, V and the FFN up state. What this project chose (the paper
    leaves these open; each is a reading, not a published fact):
    - generator input: the post-input_layernorm states the q/k/v projections see (decoder); the encoder layer's
      input, already layer-normed there (post-LN).
    - pooling: "last" = last prompt token (in a causal model the only one that has read the whole prompt); "first"
      = first token (an encoder's <s>/[CLS], which its classifier reads; build_method uses it when "last" is asked
      of an encoder); "mean" = masked mean of the prompt tokens. prompt_mask None counts every token as prompt.
    - bottleneck width = rank (≈12 reproduces the ≈8.9 M parameters the paper reports for its predecessor PARA on
      LLaMA-2-7B); biases on both Linears.
    - q is scaled before RoPE (PEFT's IA³ on q_proj does the same; RoPE mixes pairs of features, so the order
      matters unless l_q is equal within each rotated pair).
    - init: W_up, b_up = 0, so l ≡ 1 and training starts exactly at the base model ((IA)³'s ones); W_down, b_down
      nn.Linear's defaults; σ a leaky-ReLU fit (RationalActivation).
    - NOT implemented: the bi-level optimisation. The rational coefficients train jointly with everything else,
      on the same data and by the same optimizer.
    The generator runs in fp32, autocast off, and the scales stay fp32: project and ffn_hidden multiply in fp32 and
    cast the product once, as PEFT's (IA)³ does (in bf16, 1.003 would round to exactly 1.0 and small scales could not
    be learned). The FFN product is recomputed in the backward, so the scale costs no activation memory.
    """

    def __init__(self, layers: list[int], hidden_size: int, q_width: int, v_width: int, u_width: int, rank: int,
                 pooling: str = "last"):
        super().__init__()
        if pooling not in ("last", "first", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}: expected last, first or mean")
        self.layers, self.pooling, self.widths = list(layers), pooling, (q_width, v_width, u_width)
        self.generators = nn.ModuleDict()
        ### BEGIN SOLUTION pedro
        for l in self.layers:  # one generator per layer: down [rank, d] -> rational σ -> up [q + v + u, rank]
            up = nn.Linear(rank, q_width + v_width + u_width)
            nn.init.zeros_(up.weight)  # z ≡ 0, l = 1 + z ≡ 1: the base model at init
            nn.init.zeros_(up.bias)
            self.generators[str(l)] = nn.Sequential(nn.Linear(hidden_size, rank), RationalActivation(), up)
        ### END SOLUTION pedro

    def pool(self, x, prompt_mask):
        """x [B, T, d], prompt_mask [B, T] (1 = prompt token) or None -> [B, d]."""
        ### BEGIN SOLUTION pedro
        B, T, _ = x.shape
        m = torch.ones(B, T, device=x.device) if prompt_mask is None else (prompt_mask > 0).to(x.dtype)
        if self.pooling == "mean":
            return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        order = torch.arange(1, T + 1, device=x.device)  # argmax of m·order = the last prompt token of each row
        idx = (m * (order if self.pooling == "last" else order.flip(0))).argmax(1)  # [B]
        return x[torch.arange(B, device=x.device), idx]
        ### END SOLUTION pedro

    def block_input(self, layer: int, x, prompt_mask, cache):
        """Seam 1: the layer's Scales(q, v, u) from its input x [B, T, d], at prefill; decode steps reuse them."""
        if str(layer) not in self.generators:
            return None
        if cache is not None and layer in cache.method_state:  # decode step: reuse the vectors of the prompt
            return cache.method_state[layer]
        generator = self.generators[str(layer)]
        with torch.autocast(x.device.type, enabled=False):
            ### BEGIN SOLUTION pedro
            z = generator(self.pool(x.to(generator[0].weight.dtype), prompt_mask))  # [B, q + v + u]
            s = Scales(*((1 + t)[:, None] for t in z.split(self.widths, -1)))  # each [B, 1, width], fp32
            ### END SOLUTION pedro
        if cache is not None:
            cache.method_state[layer] = s
        return s

    def project(self, layer: int, name: str, x, y, ctx):
        """Seam 2: l_q ⊙ q_proj(x), l_v ⊙ v_proj(x) (before RoPE); fp32 product, cast once. k is left alone."""
        return y if ctx is None or name == "k" else (y * (ctx.q if name == "q" else ctx.v)).to(y.dtype)

    def ffn_hidden(self, layer: int, gate, up, act, ctx):
        """Seam 4: act(gate) ⊙ (l_u ⊙ up), or l_u ⊙ act(up) for the encoder; fp32, cast once, recomputed."""
        if ctx is None:
            return super().ffn_hidden(layer, gate, up, act, ctx)
        if gate is None:
            return recompute_in_backward(lambda u, s: (act(u) * s).to(u.dtype), up, ctx.u)
        return recompute_in_backward(lambda g, u, s: g * (u * s).to(u.dtype), act(gate), up, ctx.u)


# -----------------------------------------------------------------------------------------------------------------
# Seam 2: LoRA, the baseline the comparisons measure the methods against


class LoRA(Method):
    """LoRA (Hu et al., arXiv 2106.09685 §4.1): y = W x + (α/r)·B A dropout(x) on chosen frozen projections, q and v by
    default (§7.1). A kaiming-uniform, B = 0 (starts at the base); added at seam 2, never merged into W; fp32; = PEFT."""

    def __init__(self, layers: list[int], shapes: dict, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()  # shapes: projection (q, k, v) -> (in, out) features; one A, B per (layer, projection)
        self.scaling, self.dropout = alpha / rank, nn.Dropout(dropout)
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()  # keys "layer_projection": "0_q", "0_v", ...
        for key, (n_in, n_out) in ((f"{l}_{t}", shape) for l in layers for t, shape in shapes.items()):
            self.A[key] = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(rank, n_in), a=5 ** 0.5))  # [r, in]
            self.B[key] = nn.Parameter(torch.zeros(n_out, rank))  # B [out, r] = 0: B A = 0 at the start

    def project(self, layer: int, name: str, x, y, ctx):
        A, B = self.A.get(f"{layer}_{name}"), self.B.get(f"{layer}_{name}")  # [r, in], [out, r]
        if A is None:  # a projection (or layer) this LoRA leaves alone
            return y
        with torch.autocast(x.device.type, enabled=False):
            ### BEGIN SOLUTION lora
            delta = (self.dropout(x.to(A.dtype)) @ A.T @ B.T) * self.scaling  # [B, T, in] @ [in, r] @ [r, out]
            return (y.to(A.dtype) + delta).to(y.dtype)
            ### END SOLUTION lora


# -----------------------------------------------------------------------------------------------------------------
# Building a method from its config


@dataclass
class MethodConfig:
    method: str = "loreft"  # loreft | direft | prefix | pedro | lora
    layers: list[int] = field(default_factory=list)  # block indices the method acts on (resolved, 0-based)
    positions: str = "f1+l1"  # ReFT: first A and last B prompt tokens
    share_weights: bool = False  # ReFT: one intervention for both position groups (the paper's "tied")
    position_rule: str = "paper"  # ReFT: short-prompt rule (reft_positions); old saved runs load as "legacy"
    rank: int = 4  # ReFT, LoRA: rank r of the subspace / update; PEDRO: bottleneck width of the vector generator
    dropout: float = 0.0  # ReFT: dropout on the intervention output; LoRA: on its input x
    act_fn: str = "linear"  # ReFT: activation on W h + b
    rotation: str = "qr"  # LoReFT: R as qr (Q factor of a free d×r matrix) or householder (pyreft's; LoReFT docstring)
    num_virtual_tokens: int = 8  # prefix-tuning: P
    prefix_projection: bool = False  # prefix-tuning: train through the paper's Embedding -> MLP(tanh) reparametrization
    prefix_hidden_size: int = 512  # prefix-tuning: the MLP's width
    pooling: str = "last"  # PEDRO: prompt pooling, last | first | mean ("last" on an encoder = its first token)
    lora_alpha: float = 16.0  # LoRA: α, the update is scaled by α/r (PEFT's default α is 8)
    lora_targets: str = "q,v"  # LoRA: the attention projections it updates, some of q, k, v

    def position_scheme(self) -> PositionScheme | None:
        """Where a ReFT method edits (for data.collate); None for the methods without positions."""
        if self.method not in ("loreft", "direft"):
            return None
        return PositionScheme(*parse_positions(self.positions), self.share_weights, self.position_rule)


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
    if cfg.method in ("loreft", "direft", "pedro", "lora") and cfg.rank <= 0:
        raise ValueError(f"rank must be positive, got {cfg.rank}")
    if cfg.method in ("loreft", "direft"):
        for name, allowed in (("act_fn", ACTIVATIONS), ("position_rule", POSITION_RULES),
                              ("rotation", ("qr", "householder"))):
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(cfg, name)!r}: expected one of {', '.join(allowed)}")
        scheme = cfg.position_scheme()
        m = ReFT(cfg.method, mc.hidden_size, cfg.layers, cfg.rank,
                 num_groups(scheme.first, scheme.last, scheme.share_weights), cfg.dropout, cfg.act_fn, cfg.rotation)
    elif cfg.method in ("prefix", "pedro", "lora"):
        n_kv = getattr(mc, "num_key_value_heads", mc.num_attention_heads)  # EncoderConfig: no GQA, no head_dim
        head_dim = getattr(mc, "head_dim", mc.hidden_size // mc.num_attention_heads)
        if cfg.method == "prefix":
            if cfg.num_virtual_tokens <= 0:
                raise ValueError(f"num_virtual_tokens must be positive, got {cfg.num_virtual_tokens}")
            m = PrefixTuning(mc.num_hidden_layers, n_kv, head_dim, cfg.num_virtual_tokens, cfg.prefix_projection,
                             cfg.prefix_hidden_size)
        elif cfg.method == "lora":
            out = {"q": mc.num_attention_heads * head_dim, "k": n_kv * head_dim, "v": n_kv * head_dim}  # features
            if not set(targets := cfg.lora_targets.split(",")) <= set(out):
                raise ValueError(f"bad lora_targets {cfg.lora_targets!r}: expected some of q,k,v (e.g. q,v)")
            m = LoRA(cfg.layers, {t: (mc.hidden_size, out[t]) for t in targets}, cfg.rank, cfg.lora_alpha, cfg.dropout)
        else:
            encoder = mc.model_type in ("roberta", "bert")  # summarises in its first token, <s> / [CLS]
            pooling = "first" if encoder and cfg.pooling == "last" else cfg.pooling
            m = PEDRO(parse_layers(cfg.layers, mc.num_hidden_layers), mc.hidden_size, mc.num_attention_heads * head_dim,
                      n_kv * head_dim, mc.intermediate_size, cfg.rank, pooling)
    else:
        raise ValueError(f"unknown method {cfg.method!r}: expected loreft, direft, prefix, pedro or lora")
    return m.to(next(model.parameters()).device)
