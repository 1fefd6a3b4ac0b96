"""Checkpoint formats and downloads: everything between a file on disk (or a name on the Hub) and model.py's classes.

Hugging Face folders (config.json + model.safetensors, sharded safetensors or pytorch_model.bin), llama2.c's legacy
.bin export and .pt training checkpoints, public names (stories260K, ...) and Hugging Face repo ids. Loading is
"rename with a visible table, strict copy, check every key and shape" (`load_weights`). `model.from_pretrained`
calls `from_pretrained` here.
"""
import http.client
import json
import math
import os
import re
import struct
import sys
import urllib.parse
import urllib.request
from dataclasses import fields

import numpy as np
import torch
import torch.nn as nn

from model import Encoder, EncoderConfig, Llama, LlamaConfig

def config_from_json(cls, d: dict):
    """LlamaConfig or EncoderConfig from a config.json dict, keeping only the keys the dataclass knows."""
    d = dict(d)
    if "rope_parameters" in d:  # transformers >= 5 nests rope_theta and the scaling under one key
        rp = dict(d.pop("rope_parameters") or {})
        d["rope_theta"] = rp.pop("rope_theta", d.get("rope_theta", 10000.0))
        d["rope_scaling"] = rp if rp.get("rope_type", "default") != "default" else None
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


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


def download(url: str, dest: str) -> str:
    """Fetch url to dest once; later calls use the local copy. The bytes go to dest.part, renamed when complete, so
    dest is never a partial file. HTTP 403, or the Hub's X-Error-Code GatedRepo -> PermissionError (gated: accept the
    license, set HF_TOKEN); HTTP 401/404 (no such file, or a private or gated repo) -> FileNotFoundError; any other
    failure -> ConnectionError."""
    if os.path.exists(dest):
        return dest
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    part = dest + ".part"
    try:
        with urllib.request.urlopen(_request(url), timeout=30) as r:
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
        if os.path.exists(part):
            os.remove(part)  # a broken download leaves nothing behind
    return dest


def download_repo(repo: str, folder: str) -> str:
    """config.json, the weights (one file, or an index and its shards), the tokenizer files (tokenizer_config.json
    and its chat template included) and generation_config.json of a Hugging Face repo. They land in folder.part,
    renamed to folder when all are there: an existing folder is a complete copy. $HF_TOKEN opens gated repos."""
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
    for name in ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json",
                 "chat_template.jinja", "generation_config.json"):
        try:
            download(base + name, os.path.join(part, name))
        except FileNotFoundError:  # a repo has one tokenizer format (or none), maybe no template: the others are absent
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
        d = json.load(open(cfg_path))
        state = read_hf_weights(path)
        model_type = d.get("model_type")
        if model_type in ("llama", "qwen2"):  # Qwen2/2.5: the LLaMA block with biases on q, k, v
            _check_llama_json(d, cfg_path)
            model = Llama(config_from_json(LlamaConfig, d))
            load_weights(model, state, LLAMA_RENAMES, source=path)
        elif model_type in ("roberta", "bert"):
            cfg = config_from_json(EncoderConfig, d)
            head = state.get("classifier.out_proj.weight", state.get("classifier.weight"))  # fine-tuned head?
            model = Encoder(cfg, num_labels=head.shape[0] if head is not None else 0)
            load_weights(model, state, ENCODER_RENAMES, ENCODER_IGNORED + (r"|^pooler\." if cfg.model_type ==
                                                                           "roberta" else ""), source=path)
        else:
            raise ValueError(f"{cfg_path}: model_type {model_type!r} is not supported (llama, qwen2, roberta, bert)")
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

