"""Checkpoint formats and downloads: everything between a file on disk (or a name on the Hub) and model.py's classes.

Hugging Face folders (config.json + model.safetensors, sharded safetensors or pytorch_model.bin), llama2.c's legacy
.bin export and .pt training checkpoints, public names (stories260K, ...) and Hugging Face repo ids. Loading is
"rename with a visible table, strict copy, check every key and shape" (`load_weights`). `model.from_pretrained`
calls `from_pretrained` here.
"""
import hashlib
import http.client
import math
import os
import re
import struct
import sys
import urllib.parse
import urllib.request
from contextlib import contextmanager, nullcontext
from dataclasses import fields

import numpy as np
import torch
import torch.nn as nn

from model import Encoder, EncoderConfig, Llama, LlamaConfig
from support import files
from support.untrusted import json_object, load_torch, parse_json, plain_name

# config.json must state these: a missing size is an error, never a default (LlamaConfig's defaults are a 7B shape)
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
POSITIVE_INTS = REQUIRED_SIZES + ("num_key_value_heads", "head_dim", "max_position_embeddings", "type_vocab_size")
POSITIVE_FLOATS = ("rms_norm_eps", "layer_norm_eps", "rope_theta")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_config(d: dict, source: str):
    """Refuse a config.json that lacks a size or states an impossible one (a count that is not a positive integer, a
    non-positive or non-finite eps/theta), before anything is built from it."""
    missing = [k for k in REQUIRED_SIZES if k not in d]
    if missing:
        raise ValueError(f"{source}: no {', '.join(missing)}: config.json must state the model's sizes")
    for k in POSITIVE_INTS:
        if d.get(k) is not None and not (_is_int(d[k]) and 0 < d[k] < 1 << 31):
            raise ValueError(f"{source}: {k} = {d[k]!r} must be a positive integer")
    for k in POSITIVE_FLOATS:
        v = d.get(k)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and v > 0):
            raise ValueError(f"{source}: {k} = {v!r} must be a positive finite number")
    if d.get("head_dim") is None and d["num_attention_heads"] > d["hidden_size"]:
        raise ValueError(f"{source}: num_attention_heads {d['num_attention_heads']} exceeds hidden_size "
                         f"{d['hidden_size']}")
    for k, v in (d.get("rope_scaling") or {}).items() if isinstance(d.get("rope_scaling"), dict) else ():
        if isinstance(v, float) and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{source}: rope_scaling {k} = {v!r} must be a positive finite number")


def config_from_json(cls, d: dict, source: str = "config.json"):
    """LlamaConfig or EncoderConfig from a config.json dict, keeping only the keys the dataclass knows (checked
    first: `check_config`)."""
    d = dict(d)
    if "rope_parameters" in d:  # transformers >= 5 nests rope_theta and the scaling under one key
        rp = d.pop("rope_parameters") or {}
        if not isinstance(rp, dict):
            raise ValueError(f"{source}: rope_parameters must be an object, not {type(rp).__name__}")
        rp = dict(rp)
        d["rope_theta"] = rp.pop("rope_theta", d.get("rope_theta", 10000.0))
        d["rope_scaling"] = rp if rp.get("rope_type", "default") != "default" else None
    check_config(d, source)
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in d.items() if k in known})
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # the dataclass's own checks, or a wrong type
        raise ValueError(f"{source}: {e}") from None


# -----------------------------------------------------------------------------------------------------------------
# Renames from other formats live in these tables: (regex on the checkpoint name, our name).

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


def safetensors_header(path: str) -> tuple[dict, int]:
    """The safetensors format: 8-byte little-endian header size n, a JSON header {name: {dtype, shape, data_offsets}},
    then the data. Returns ({name: (dtype, shape, begin, end)}, where the data starts), after checking what the file
    claims against what it holds: known dtypes, shapes of non-negative integers, dtype × shape = the byte count, and
    offsets that tile the data exactly (in order, in bounds, no overlap, no gap), as the safetensors library requires."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header of {n:,} bytes in a file of {size:,})")
        try:
            header = parse_json(f.read(n), "header")
        except ValueError as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    data_len, entries = size - 8 - n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"{path}: tensor {name!r}: header entry is not an object")
        dtype, shape, offsets = _ST_DTYPES.get(info.get("dtype")), info.get("shape"), info.get("data_offsets")
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r}: unknown dtype {info.get('dtype')!r}")
        if not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)):
            raise ValueError(f"{path}: tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise ValueError(f"{path}: tensor {name!r}: data_offsets {offsets!r} are not within the "
                             f"{data_len:,} data bytes")
        if math.prod(shape) * dtype.itemsize != offsets[1] - offsets[0]:
            raise ValueError(f"{path}: tensor {name!r}: {info['dtype']} {shape} needs "
                             f"{math.prod(shape) * dtype.itemsize:,} bytes, its offsets span {offsets[1] - offsets[0]:,}")
        entries[name] = (dtype, shape, offsets[0], offsets[1])
    end = 0
    for name, (_, _, a, b) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if a != end:
            raise ValueError(f"{path}: tensor {name!r} {'overlaps the one before it' if a < end else 'leaves a gap'} "
                             f"(starts at byte {a:,}, the previous one ends at {end:,})")
        end = b
    if end != data_len:
        raise ValueError(f"{path}: {data_len - end:,} bytes after the last tensor")
    return entries, 8 + n


def read_safetensors(path: str, meta: bool = False) -> dict:
    """{name: tensor} of a safetensors file (header checked by `safetensors_header`). meta=True reads the header
    alone and returns meta tensors (shape and dtype, no data): what `from_pretrained` checks before it builds."""
    entries, start = safetensors_header(path)
    if meta:
        return {name: torch.empty(shape, dtype=dtype, device="meta") for name, (dtype, shape, _, _) in entries.items()}
    with open(path, "rb") as f:
        f.seek(start)
        data = bytearray(f.read())
    out = {}
    for name, (dtype, shape, a, b) in entries.items():
        if b == a:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        # an offset that is not a multiple of the item size cannot be viewed in place: copy those bytes out
        buf, at = (data, a) if a % dtype.itemsize == 0 else (bytearray(data[a:b]), 0)
        out[name] = torch.frombuffer(buf, dtype=dtype, count=(b - a) // dtype.itemsize, offset=at).reshape(shape)
    return out


def _as_meta(state: dict) -> dict:
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}


def read_hf_weights(folder: str, meta: bool = False) -> dict:
    """All tensors of a HF model folder: model.safetensors, sharded safetensors, or pytorch_model.bin. meta=True:
    shapes and dtypes only (safetensors headers; .bin files are memory-mapped, not read)."""
    st = lambda path: read_safetensors(path, meta)
    pt = (lambda path: _as_meta(_torch_load(path))) if meta else _torch_load
    for index_name, reader in (("model.safetensors.index.json", st), ("pytorch_model.bin.index.json", pt)):
        index = os.path.join(folder, index_name)
        if os.path.exists(index):
            weight_map = json_object(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no weight_map object (tensor name -> shard file)")
            state = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                path = os.path.join(folder, plain_name(shard, index))
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{index} lists shard {shard!r}, which is not in {folder}")
                state.update(reader(path))
            return state
    for name, reader in (("model.safetensors", st), ("pytorch_model.bin", pt)):
        if os.path.exists(os.path.join(folder, name)):
            return reader(os.path.join(folder, name))
    raise FileNotFoundError(f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json "
                            "(+ shards) or pytorch_model.bin")


def _torch_load(path: str) -> dict:
    state = load_torch(path, mmap=True)  # weights-only: a checkpoint never runs code; mmap: read on first use
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path}: expected a dict of named tensors, found {type(state).__name__}")
    return state


def _rename(name: str, table) -> str:
    for pattern, repl in table:
        name = re.sub(pattern, repl, name)
    return name


def load_weights(model: nn.Module, state: dict, renames, ignored: str | None = None, source: str = "checkpoint"):
    """Strict copy: every checkpoint tensor must land on a model tensor of the same shape, floating-point data on
    floating-point weights, finite values only, and every model tensor must be filled. Errors name the offending key.
    On a model built on the meta device with meta tensors (`read_hf_weights(meta=True)`) it checks names, shapes and
    dtypes without allocating anything: `from_pretrained` does that first."""
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
            if own[name].is_floating_point() and not tensor.is_floating_point():
                raise ValueError(f"{source}: {key!r} holds {str(tensor.dtype).removeprefix('torch.')} data; this "
                                 "weight needs floating-point numbers")
            if not tensor.is_meta and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ValueError(f"{source}: {key!r} holds NaN or infinite values")
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
    state = {_rename(k, LLAMA2C_RENAMES): v for k, v in state.items()}
    with torch.device("meta"):  # names and shapes checked before anything is allocated
        load_weights(Llama(cfg), _as_meta(state), [], source=source)
    model = Llama(cfg)
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
    if dim == 0x616B3432 or not (0 < dim < 1 << 16 and 0 < n_heads <= dim and 0 < n_kv <= n_heads and dim % n_heads
                                 == 0 and n_heads % n_kv == 0 and min(hidden, n_layers, abs(vocab), seq_len) > 0):
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
    ckpt = load_torch(path, mmap=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or \
            not isinstance(ckpt.get("model_args"), dict):
        raise ValueError(f"{path} is not a llama2.c training checkpoint (expected keys 'model' and 'model_args')")
    a, state = ckpt["model_args"], ckpt["model"]
    for k in ("dim", "n_layers", "n_heads", "vocab_size"):
        if not (_is_int(a.get(k)) and a[k] > 0):
            raise ValueError(f"{path}: model_args {k} = {a.get(k)!r} must be a positive integer")
    if "layers.0.feed_forward.w1.weight" not in {_rename(k, LLAMA2C_RENAMES[:1]) for k in state} or \
            "tok_embeddings.weight" not in {_rename(k, LLAMA2C_RENAMES[:1]) for k in state}:
        raise ValueError(f"{path}: no layers.0.feed_forward.w1.weight / tok_embeddings.weight: not a llama2.c model")
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
# llama2.c's stories260K and its tokenizer ship inside the project (assets/stories260K, MIT): the default model, so the
# quick start and the tests run offline on a fresh clone. Other names are downloaded once into CACHE_DIR.
EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "stories260K")
EMBEDDED_FILES = {"stories260K": os.path.join(EMBEDDED, "stories260K.bin"),
                  "tok512.model": os.path.join(EMBEDDED, "tok512.model")}
CACHE_DIR = os.environ.get("REFT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "reft-from-scratch"))


GATED = "gated: accept the license on the model page and set HF_TOKEN"


def _request(url: str):
    """url, or a Request carrying $HF_TOKEN when it is set and the url is the Hub's (gated and private repos). The
    token goes only to huggingface.co, never to another host nor to the storage the Hub redirects to."""
    token = os.environ.get("HF_TOKEN")
    if not token or urllib.parse.urlsplit(url).hostname != "huggingface.co":
        return url
    request = urllib.request.Request(url)
    request.add_unredirected_header("Authorization", f"Bearer {token}")
    return request


class HubRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (the Hub sends LFS files to its storage), refuses any from https to plain http, and keeps the
    X-Linked-ETag / X-Linked-Size headers the Hub puts on an LFS file's redirect: the file's sha256 and size."""

    def __init__(self):
        self.linked: dict = {}

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(req.full_url).scheme == "https" and urllib.parse.urlsplit(newurl).scheme != "https":
            raise ValueError(f"{req.full_url}: redirected to {newurl}, from https to plain http: refused")
        self.linked.update({k: headers[k] for k in ("X-Linked-ETag", "X-Linked-Size") if headers.get(k)})
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(redirects: HubRedirects):
    """The urllib opener downloads go through (tests put a fake Hub in front of it)."""
    return urllib.request.build_opener(redirects)


@contextmanager
def _lock(path: str):
    """An exclusive lock on the file `path` for the block: concurrent processes (torchrun ranks, two terminals)
    fetching the same thing take turns, and the later ones find it complete. (No fcntl, as on Windows: no lock; each
    process still writes a temporary file of its own, so none ever reads another's partial file.)"""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _expected_sha256(redirects: HubRedirects, headers) -> str | None:
    """The sha256 the Hub states for an LFS file (X-Linked-ETag on its redirect, or on the response), else None."""
    etag = redirects.linked.get("X-Linked-ETag") or headers.get("X-Linked-ETag") or ""
    etag = etag.removeprefix("W/").strip('"').lower()
    return etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None


def _fetch(url: str, f):
    """url's body into the open file f, whole: a body shorter or longer than its Content-Length, a response without
    one (a cut stream could not be told from a whole file), or bytes that do not hash to the Hub's sha256 are errors."""
    redirects = HubRedirects()
    with _opener(redirects).open(_request(url), timeout=30) as r:
        size, sha = r.headers.get("Content-Length"), _expected_sha256(redirects, r.headers)
        linked = redirects.linked.get("X-Linked-Size") or r.headers.get("X-Linked-Size")
        if size is None or not size.isdigit():
            raise OSError("no Content-Length in the response: cannot tell a whole file from a cut one")
        digest = hashlib.sha256()
        while chunk := r.read(1 << 20):
            f.write(chunk), digest.update(chunk)
        got = f.tell()
    if got != int(size):  # http.client ends a cut stream quietly, as if it were complete
        raise OSError(f"connection closed after {got} of {size} bytes")
    if linked is not None and linked.isdigit() and int(linked) != got:
        raise OSError(f"{got} bytes, the Hub states {linked}")
    if sha is not None and digest.hexdigest() != sha:
        raise OSError(f"sha256 {digest.hexdigest()[:12]}... differs from the Hub's {sha[:12]}...")


def download(url: str, dest: str, lock: bool = True) -> str:
    """Fetch url to dest once; later calls use the local copy. The bytes go through files.atomic_write (a temporary
    file of this process, fsynced and renamed once `_fetch` found them whole and checked), so dest is never a partial
    file; with lock, concurrent processes take turns (`_lock`) and the later ones find dest complete. HTTP 403, or the Hub's X-Error-Code
    GatedRepo -> PermissionError (gated: accept the license, set HF_TOKEN); HTTP 401/404 (no such file, or a private
    or gated repo) -> FileNotFoundError; an https -> http redirect -> ValueError; any other failure -> ConnectionError."""
    if os.path.exists(dest):
        return dest
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    folder = os.path.dirname(os.path.abspath(dest))
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        with _lock(dest + ".lock") if lock else nullcontext():
            if os.path.exists(dest):  # another process fetched it while this one waited
                return dest
            files.atomic_write(dest, lambda f: _fetch(url, f))  # a broken download leaves nothing behind
    except (OSError, http.client.HTTPException) as e:
        code = getattr(e, "code", None)  # HTTPError; the Hub says why in an X-Error-Code header
        if code == 403 or (code == 401 and (getattr(e, "headers", None) or {}).get("X-Error-Code") == "GatedRepo"):
            token = " (HF_TOKEN sent)" if os.environ.get("HF_TOKEN") else ""
            raise PermissionError(f"{url}: HTTP {code}{token}: {GATED}") from None
        if code in (401, 404):  # the Hub answers 401 for repos that do not exist (and for gated ones without a token)
            raise FileNotFoundError(f"{url}: HTTP {code} {e.reason} (no such file, or a private repo; if it is "
                                    f"{GATED})") from None
        raise ConnectionError(f"cannot download {url} ({getattr(e, 'reason', None) or e}); offline? Download it "
                              "yourself and pass the local path instead") from None
    finally:
        _tidy(dest + ".lock" if lock else None, folder if made else None)
    return dest


def _tidy(lock: str | None, folder: str | None):
    """Remove a lock file, and a folder this call made if it is empty. (A process still waiting on the removed lock
    then takes it, finds the file or folder complete, and uses it; if the fetch failed, it fetches on its own into a
    temporary file of its own.)"""
    for path, remove in ((lock, os.remove), (folder, os.rmdir)):
        try:
            if path and (remove is os.remove or not os.listdir(path)):
                remove(path)
        except OSError:
            pass


def download_repo(repo: str, folder: str) -> str:
    """config.json, the weights (one file, or an index and its shards), the tokenizer files (tokenizer_config.json
    and its chat template included) and generation_config.json of a Hugging Face repo. They land in folder.part,
    renamed to folder when all are there: an existing folder is a complete copy. One process at a time fetches a
    repo (a lock beside the folder; the others wait, then use the folder). Every name read from the repo (the shards
    of an index) must be a plain file name inside it. $HF_TOKEN opens gated repos."""
    base, part = f"https://huggingface.co/{repo}/resolve/main/", folder + ".part"
    cache = os.path.dirname(os.path.abspath(folder))
    made = not os.path.isdir(cache)
    os.makedirs(cache, exist_ok=True)
    try:
        return _download_repo_locked(repo, base, part, folder)
    finally:
        _tidy(folder + ".lock", cache if made else None)


def _download_repo_locked(repo: str, base: str, part: str, folder: str) -> str:
    with _lock(folder + ".lock"):
        if os.path.isdir(folder):  # another process fetched it while this one waited
            return folder
        try:  # files left in folder.part by a stopped fetch are whole (each was renamed into place): kept
            download(base + "config.json", os.path.join(part, "config.json"), lock=False)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{repo}: no such local file or folder, nor a public Hugging Face repo ({e})") \
                from None
        for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin"):  # the first found
            try:
                path = download(base + name, os.path.join(part, name), lock=False)
            except FileNotFoundError:  # the repo stores its weights under another name
                continue
            if name.endswith("index.json"):  # sharded: the index maps every tensor to one of the shard files
                weight_map = json_object(path).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise ValueError(f"{repo}/{name}: no weight_map object (tensor name -> shard file)")
                for shard in sorted(set(map(str, weight_map.values()))):
                    shard = plain_name(shard, f"{repo}/{name}")
                    download(base + urllib.parse.quote(shard), os.path.join(part, shard), lock=False)
            break
        else:
            raise FileNotFoundError(f"{repo} has no model.safetensors, model.safetensors.index.json or "
                                    "pytorch_model.bin")
        for name in ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "vocab.txt",
                     "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            try:
                download(base + name, os.path.join(part, name), lock=False)
            except FileNotFoundError:  # a repo has one tokenizer format (or none), maybe no template
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
    """A local path as is; stories260K and tok512.model from assets/; another public name (stories15M, ...) or a HF
    repo id ("org/name") downloaded once into CACHE_DIR."""
    if os.path.exists(name_or_path):
        return name_or_path
    if name_or_path in EMBEDDED_FILES and os.path.exists(EMBEDDED_FILES[name_or_path]):
        return EMBEDDED_FILES[name_or_path]
    if name_or_path in PUBLIC_FILES:
        url = PUBLIC_FILES[name_or_path]
        return download(url, os.path.join(CACHE_DIR, url.rsplit("/", 1)[1]))
    if _is_repo_id(name_or_path):
        folder = os.path.join(CACHE_DIR, name_or_path.replace("/", "--"))
        return folder if os.path.isdir(folder) else download_repo(name_or_path, folder)
    raise FileNotFoundError(f"{name_or_path}: no such file or folder (and not a known model name: "
                            f"{', '.join(PUBLIC_FILES)}, or a Hugging Face repo id)")


def _check_llama_json(d: dict, source: str):
    """config.json keys that LlamaConfig drops must not change the computation. attention_dropout (training only),
    pretraining_tp (a sliced matmul, numerically the same) and Qwen2's max_window_layers (unused without a window) are
    safe to drop; an active sliding window is not.
    (transformers' LlamaModel ignores sliding_window too, but a llama-typed checkpoint that sets it was trained to
    see only the last W tokens, which full attention does not reproduce on longer inputs.)"""
    window = d.get("sliding_window")
    if window is not None and d.get("use_sliding_window", True) and window < d.get("max_position_embeddings", 2048):
        raise ValueError(f"{source}: sliding_window={window} (attention to the last {window} tokens only) is not "
                         "supported; this model attends to the whole context")
    # Qwen2 configs say whether their window is used (use_sliding_window, false in every released Qwen2/2.5 model);
    # transformers >= 5 also lists each layer's kind in layer_types
    sliding = d.get("model_type") == "qwen2" and d.get("use_sliding_window") or "sliding_attention" in (
        d.get("layer_types") or [])
    if sliding:
        raise ValueError(f"{source}: use_sliding_window: true (sliding-window attention, sliding_window={window}) is "
                         "not supported; this model attends to the whole context")


def from_pretrained(path: str, dtype=None, device=None) -> "Llama | Encoder":
    """Load a HF folder (config.json + weights), a llama2.c .bin export or .pt training checkpoint, or a public
    name (see `resolve`). dtype None keeps the checkpoint's dtype (llama2.c: fp32)."""
    path = resolve(path)
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{path} is not a model folder: expected config.json and model.safetensors "
                                    "(or model.safetensors.index.json, or pytorch_model.bin)")
        d = json_object(cfg_path)
        model_type = d.get("model_type")
        if model_type in ("llama", "qwen2"):  # Qwen2/2.5: the LLaMA block with biases on q, k, v
            _check_llama_json(d, cfg_path)
            cfg, renames, ignored = config_from_json(LlamaConfig, d, cfg_path), LLAMA_RENAMES, None
            build = lambda state: Llama(cfg)
        elif model_type in ("roberta", "bert"):
            cfg, renames = config_from_json(EncoderConfig, d, cfg_path), ENCODER_RENAMES
            ignored = ENCODER_IGNORED + (r"|^pooler\." if cfg.model_type == "roberta" else "")

            def build(state):
                head = state.get("classifier.out_proj.weight", state.get("classifier.weight"))  # fine-tuned head?
                return Encoder(cfg, num_labels=head.shape[0] if head is not None and head.dim() == 2 else 0)
        else:
            raise ValueError(f"{cfg_path}: model_type {model_type!r} is not supported (llama, qwen2, roberta, bert)")
        shapes = read_hf_weights(path, meta=True)  # headers only: checked against config.json before allocating
        with torch.device("meta"):
            load_weights(build(shapes), shapes, renames, ignored, source=path)
        state = read_hf_weights(path)
        model = build(state)
        load_weights(model, state, renames, ignored, source=path)
        if dtype is None:
            dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    elif path.endswith(".pt"):
        model = read_llama2c_pt(path)
    elif path.endswith(".bin"):
        model = read_llama2c_bin(path)
    else:
        raise ValueError(f"{path} is not a checkpoint: expected a model folder (config.json + weights), a llama2.c "
                         f".bin export or .pt training checkpoint, or a model name ({', '.join(PUBLIC_FILES)})")
    return model.to(device=device, dtype=dtype).eval()


def tokenizer_path(model: str, tokenizer: str) -> str:
    """--tokenizer, else the model's folder; the shipped stories260K's tokenizer is tok512.model."""
    if tokenizer:
        return resolve(tokenizer)
    path = resolve(model)
    if os.path.isdir(path):
        return path
    if os.path.abspath(path) == os.path.abspath(EMBEDDED_FILES["stories260K"]):
        return EMBEDDED_FILES["tok512.model"]
    raise ValueError("a llama2.c checkpoint needs --tokenizer (e.g. tok512.model for stories260K)")
