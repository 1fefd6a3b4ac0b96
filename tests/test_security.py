"""Files a user did not write (docs/reference.md, "What is trusted"): no file runs code, no download writes outside the
cache or keeps a partial file, and no crafted file allocates or loops without bound. Every refusal is one line
naming the file.

- planted pickles at every entry point that reads a run folder or a model file: a marker file must never appear;
- a fake Hub (a urllib handler, no network): traversal names, cut and unsized bodies, wrong sha256, https -> http,
  two concurrent fetchers;
- crafted config.json, safetensors, chat templates and tokenizer.json files, each with its one-line error, in time.
"""
import hashlib
import json
import os
import re
import struct
import sys
import threading
import time
import urllib.error
from pathlib import Path

import pytest
import torch

import model as M
import train
from conftest import REPO, use_fake_net, write_pyreft_folder
from support import checkpoints, chat, cli
from support.hf_tokenizer import _pattern
from support.untrusted import load_torch, parse_json, plain_name, read_json
from support.checkpoints import from_pretrained

STEER = str(REPO / "examples" / "steer_train.jsonl")


class Planted:
    """Unpickling this object opens (creates) the marker file: the proof that a load ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": {"method": "loreft", "rank": 4}, "x": Planted(marker), **extra}, path)


def one_line_error(main, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    assert "weights_only=False" not in msg and "Traceback" not in msg
    return msg


LM = ["--model", "stories260K", "--data", STEER, "--max-steps", "1", "--eval-fraction", "0"]


# -----------------------------------------------------------------------------------------------------------------
# 1. No pickle, anywhere


@pytest.mark.parametrize("name", ["checkpoint.pt", "reft.pt"])
@pytest.mark.parametrize("flags", [[], ["--resume"]], ids=["out", "resume"])
def test_planted_pickle_in_out_folder_never_runs(name, flags, tmp_path):
    marker, out = tmp_path / "MARKER", tmp_path / "run"
    plant(out / name, marker)
    if flags and name == "reft.pt":  # --resume reads checkpoint.pt: plant both
        plant(out / "checkpoint.pt", marker)
    msg = one_line_error(cli.main, LM + ["--out", str(out)] + flags)
    assert name in msg or "checkpoint.pt" in msg
    assert not marker.exists()


def test_overwrite_replaces_a_planted_run_without_reading_it(tmp_path, capsys):
    marker, out = tmp_path / "MARKER", tmp_path / "run"
    plant(out / "checkpoint.pt", marker)
    plant(out / "reft.pt", marker)
    cli.main(LM + ["--out", str(out), "--overwrite"])
    assert not marker.exists()
    assert load_torch(str(out / "reft.pt"))["config"]["method"] == "loreft"  # replaced by a real run


def test_planted_pickle_in_load_folder_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    plant(tmp_path / "run" / "reft.pt", marker)
    msg = one_line_error(cli.main, ["--model", "stories260K", "--load", str(tmp_path / "run"), "--prompt", "Hi"])
    assert "reft.pt: not a weights-only PyTorch file, refused (Unsupported global" in msg
    assert not marker.exists()


def test_planted_pickle_in_classification_load_never_runs(minilm_dir, tmp_path):
    marker = tmp_path / "MARKER"
    plant(tmp_path / "run" / "reft.pt", marker)
    msg = one_line_error(cli.main, ["--model", str(minilm_dir), "--load", str(tmp_path / "run"), "--eval-data",
                                      str(REPO / "examples" / "sentiment_dev.jsonl")])
    assert "reft.pt: not a weights-only PyTorch file" in msg and not marker.exists()


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_planted_pickle_in_comparison_never_runs(resume, tmp_path, capsys):
    marker, out = tmp_path / "MARKER", tmp_path / "cmp"
    for method in ("loreft", "direft"):
        plant(out / method / "seed0" / "checkpoint.pt", marker)
    data = tmp_path / "four.jsonl"
    data.write_text("".join(open(STEER).readlines()[:4]))
    argv = ["--model", "stories260K", "--data", str(data), "--epochs", "1", "--eval-fraction", "0",
            "--method", "loreft,direft", "--seeds", "1", "--out", str(out)]
    if resume:
        one_line_error(cli.main, argv + ["--resume"])
    else:  # a fresh comparison into folders that hold no finished run: replaced, never read
        cli.main(argv)
    assert not marker.exists()


def test_planted_pickle_in_pyreft_folder_never_runs(tmp_path):
    marker, folder = tmp_path / "MARKER", tmp_path / "pyreft"
    write_pyreft_folder(folder, "LoreftIntervention", [0], [{}], dim=64)
    for p in folder.glob("intkey_*.bin"):
        torch.save({"weight": Planted(marker)}, p)
    msg = one_line_error(cli.main, ["--model", "stories260K", "--load", str(folder), "--positions", "f1",
                                      "--prompt", "Hi"])
    assert "intkey_" in msg and "not a weights-only PyTorch file" in msg and not marker.exists()


def test_planted_pickle_in_model_files_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"model": {"x": Planted(marker)}, "model_args": {}}, tmp_path / "ckpt.pt")
    msg = one_line_error(cli.model_main, [str(tmp_path / "ckpt.pt"), "--prompt", "hi"])
    assert "ckpt.pt: not a weights-only PyTorch file" in msg
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    torch.save({"model.embed_tokens.weight": Planted(marker)}, folder / "pytorch_model.bin")
    msg = one_line_error(cli.model_main, [str(folder), "--prompt", "hi"])
    assert "pytorch_model.bin: not a weights-only PyTorch file" in msg and not marker.exists()


def test_every_saved_format_still_loads_weights_only():
    """reft.pt / checkpoint.pt of every version (the legacy fixtures were written by the pre-refactor code)."""
    legacy = REPO / "tests" / "fixtures" / "legacy_v1"
    files = sorted(legacy.rglob("*.pt"))
    assert len(files) >= 4
    for path in files:
        blob = load_torch(str(path))
        assert isinstance(blob, dict) and blob  # reft.pt, checkpoint.pt, or a resumed run's state dict


# -----------------------------------------------------------------------------------------------------------------
# 2. Downloads: inside the cache, whole, over https


def hub(files: dict, redirects: dict | None = None, log: list | None = None, delay: float = 0.0):
    """A fake Hub: files {url: (headers, body)}; redirects {url: (status, location, headers)}; 404 otherwise."""
    def serve(url):
        if log is not None:
            log.append(url)
        if redirects and url in redirects:
            status, location, headers = redirects[url]
            return status, {"Location": location, **headers}, b""
        if url in files:
            headers, body = files[url]
            time.sleep(delay)
            return 200, headers, body
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
    return serve


def sized(body: bytes) -> tuple[dict, bytes]:
    return {"Content-Length": str(len(body))}, body


BASE = "https://huggingface.co/org/tiny/resolve/main/"


@pytest.mark.parametrize("shard", ["/tmp/evil.safetensors", "../../evil.safetensors", "a/../../evil.safetensors",
                                   "..\\evil.safetensors", ""])
def test_shard_names_from_a_repo_stay_inside_the_cache(shard, tmp_path, monkeypatch):
    index = json.dumps({"weight_map": {"w": shard}}).encode()
    files = {BASE + "config.json": sized(json.dumps(TINY).encode()),
             BASE + "model.safetensors.index.json": sized(index)}
    monkeypatch.setattr(checkpoints, "CACHE_DIR", str(tmp_path / "cache"))
    use_fake_net(monkeypatch, hub(files))
    with pytest.raises(ValueError, match="is not a plain file name inside the folder"):
        checkpoints.resolve("org/tiny")
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert "evil.safetensors" not in written and not Path("/tmp/evil.safetensors").exists()


def test_local_index_naming_a_file_outside_the_folder_is_refused(tmp_path):
    folder = tiny_folder(tmp_path)
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    with pytest.raises(ValueError, match="'../outside.safetensors' is not a plain file name"):
        from_pretrained(str(folder))


@pytest.mark.parametrize("headers, body, message", [
    ({"Content-Length": "100"}, b"x" * 60, "connection closed after 60 of 100 bytes"),
    ({}, b"x" * 60, "no Content-Length"),
    ({"Content-Length": "60", "X-Linked-ETag": '"' + "0" * 64 + '"'}, b"x" * 60, "sha256 .* differs from the Hub's"),
    ({"Content-Length": "60", "X-Linked-Size": "61"}, b"x" * 60, "60 bytes, the Hub states 61"),
], ids=["cut", "unsized", "sha256", "linked_size"])
def test_an_incomplete_or_wrong_body_is_never_cached(headers, body, message, tmp_path, monkeypatch):
    dest = tmp_path / "cache" / "m.bin"
    use_fake_net(monkeypatch, hub({"https://huggingface.co/m.bin": (headers, body)}))
    with pytest.raises(ConnectionError, match=message):
        checkpoints.download("https://huggingface.co/m.bin", str(dest))
    assert not dest.parent.exists()  # nothing cached, no temporary file, no lock, no empty folder


def test_the_hub_sha256_on_a_redirect_is_checked(tmp_path, monkeypatch):
    body = b"weights" * 100
    good = hashlib.sha256(body).hexdigest()
    cdn = "https://cdn.example/blob"
    for sha, ok in ((good, True), ("1" * 64, False)):
        redirects = {BASE + "model.bin": (302, cdn, {"X-Linked-ETag": f'"{sha}"', "X-Linked-Size": str(len(body))})}
        use_fake_net(monkeypatch, hub({cdn: sized(body)}, redirects))
        dest = tmp_path / sha[:4] / "model.bin"
        if ok:
            assert Path(checkpoints.download(BASE + "model.bin", str(dest))).read_bytes() == body
        else:
            with pytest.raises(ConnectionError, match="differs from the Hub's"):
                checkpoints.download(BASE + "model.bin", str(dest))
            assert not dest.exists()


def test_https_to_http_redirect_is_refused(tmp_path, monkeypatch):
    log = []
    redirects = {BASE + "model.bin": (302, "http://cdn.example/blob", {})}
    use_fake_net(monkeypatch, hub({"http://cdn.example/blob": sized(b"x")}, redirects, log))
    with pytest.raises(ValueError, match="from https to plain http: refused"):
        checkpoints.download(BASE + "model.bin", str(tmp_path / "c" / "model.bin"))
    assert log == [BASE + "model.bin"]  # the http URL was never asked for
    assert not (tmp_path / "c").exists()


def test_the_token_goes_to_the_hub_only_across_redirects(tmp_path, monkeypatch):
    seen = []

    def serve(req):
        seen.append((req.full_url, req.get_header("Authorization") or req.unredirected_hdrs.get("Authorization")))
        if req.full_url == BASE + "model.bin":
            return 302, {"Location": "https://cdn.example/blob"}, b""
        return 200, {"Content-Length": "3"}, b"abc"
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    use_fake_net(monkeypatch, serve, pass_request=True)
    checkpoints.download(BASE + "model.bin", str(tmp_path / "model.bin"))
    assert seen == [(BASE + "model.bin", "Bearer hf_secret"), ("https://cdn.example/blob", None)]


def test_concurrent_fetchers_share_no_partial_file(tmp_path, monkeypatch):
    """Two fetchers of one file (torchrun ranks, two terminals): one downloads while the other waits, and both get
    the whole file; the server is asked once."""
    body, log = os.urandom(3 << 20), []
    use_fake_net(monkeypatch, hub({BASE + "big.bin": sized(body)}, log=log, delay=0.3))
    dest, results, errors = tmp_path / "cache" / "big.bin", [], []

    def fetch():
        try:
            results.append(Path(checkpoints.download(BASE + "big.bin", str(dest))).read_bytes())
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=fetch) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not errors and results == [body, body]
    assert log == [BASE + "big.bin"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big.bin"]  # no temporary or lock file left


def test_concurrent_repo_fetchers_get_one_complete_folder(tmp_path, monkeypatch):
    folder = tiny_folder(tmp_path / "src")
    files = {BASE + n: sized((folder / n).read_bytes()) for n in ("config.json", "model.safetensors")}
    log = []
    use_fake_net(monkeypatch, hub(files, log=log, delay=0.2))
    monkeypatch.setattr(checkpoints, "CACHE_DIR", str(tmp_path / "cache"))
    paths, errors = [], []

    def fetch():
        try:
            paths.append(checkpoints.resolve("org/tiny"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=fetch) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors and len(set(paths)) == 1
    assert log.count(BASE + "model.safetensors") == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["org--tiny"]
    from_pretrained(paths[0])


# -----------------------------------------------------------------------------------------------------------------
# 3. Checked before allocated


TINY = {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": False}


def tiny_folder(root: Path, config: dict | None = None) -> Path:
    """A tiny random llama folder in the real formats (config.json + model.safetensors), written with safetensors."""
    from safetensors.torch import save_file
    root.mkdir(parents=True, exist_ok=True)
    cfg = M.LlamaConfig(**TINY)
    torch.manual_seed(0)
    state = {"model." + k if k != "lm_head.weight" else k: v.contiguous() for k, v in M.Llama(cfg).state_dict().items()}
    save_file(state, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(config or TINY))
    return root


def st_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def check_one_line(folder: Path, message: str, seconds: float = 10.0):
    """model.py FOLDER answers with one line `error: FILE: message`, quickly, without building the model."""
    t0 = time.time()
    msg = one_line_error(cli.model_main, [str(folder), "--prompt", "hi", "--max-new-tokens", "1"])
    assert time.time() - t0 < seconds
    assert re.search(message, msg), msg
    return msg



@pytest.mark.parametrize("change, message", [
    ({"delete": ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]},
     r"config.json: no vocab_size, hidden_size, .*must state the model's sizes"),
    ({"vocab_size": 1e10}, r"config.json: vocab_size = 10000000000.0 must be a positive integer"),
    ({"vocab_size": 10 ** 10}, r"vocab_size = 10000000000 must be a positive integer"),
    ({"vocab_size": 10 ** 9}, r"shape mismatch for '(model.embed_tokens|lm_head).weight'.*model \(1000000000, 16\)"),  # checked on headers: no 64 GB
    ({"num_hidden_layers": 0}, "num_hidden_layers = 0 must be a positive integer"),
    ({"hidden_size": True}, "hidden_size = True must be a positive integer"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps = nan must be a positive finite number"),
    ({"rope_theta": 0}, "rope_theta = 0 must be a positive finite number"),
    ({"rope_parameters": 5}, "rope_parameters must be an object"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
], ids=["only_model_type", "float_vocab", "huge_vocab", "big_vocab", "zero_layers", "bool", "nan_eps", "zero_theta",
        "rope_parameters", "kv_heads"])
def test_crafted_config_is_one_line_before_any_allocation(change, message, tmp_path):
    cfg = {k: v for k, v in TINY.items() if k not in change.get("delete", [])}
    cfg.update({k: v for k, v in change.items() if k != "delete"})
    folder = tiny_folder(tmp_path)
    (folder / "config.json").write_text(json.dumps(cfg))
    msg = check_one_line(folder, message)
    assert "config.json" in msg or "shape mismatch" in msg


def test_deeply_nested_json_is_one_line(tmp_path):
    folder = tiny_folder(tmp_path)
    (folder / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    check_one_line(folder, r"config.json: JSON nested too deeply to read")
    assert "nested too deeply" in str(pytest.raises(ValueError, parse_json, "[" * 10 ** 6, "x").value)


def _tensor_data(folder):
    raw = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def shift_all(header, n):
    for e in header.values():
        if isinstance(e, dict) and "data_offsets" in e:
            e["data_offsets"] = [o + n for o in e["data_offsets"]]
    return header


def _entry(header, suffix):
    return next(k for k in header if k.endswith(suffix))


def norm(h, key, value):
    """The header with the final norm's entry changed: key = value (or the whole entry, when key is None)."""
    name = _entry(h, "norm.weight")
    if key is None:
        h[name] = value
    else:
        h[name][key] = value
    return h


@pytest.mark.parametrize("edit, message", [
    (lambda h, d: (norm(h, None, {"dtype": "F32", "shape": [16]}), d), r"data_offsets None are not within"),
    (lambda h, d: (norm(h, "dtype", "Q9"), d), r"unknown dtype 'Q9'"),
    (lambda h, d: (norm(h, "shape", "16"), d), r"shape '16' is not a list"),
    (lambda h, d: (norm(h, "shape", [-16]), d), r"is not a list of non-negative"),
    (lambda h, d: (norm(h, "data_offsets", [0, 2 ** 70]), d), r"are not within"),
    (lambda h, d: (norm(h, "shape", [17]), d), r"needs 68 bytes, its offsets span 64"),
    (lambda h, d: (h, d + b"\0" * 8), r"8 bytes after the last tensor"),
    (lambda h, d: ({**h, "__x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, d),
     r"overlaps the one before it"),
    (lambda h, d: (shift_all(h, 8), b"\0" * 8 + d), r"leaves a gap"),
    (lambda h, d: (["x"], d), r"header is not a JSON object"),
], ids=["no_offsets", "dtype", "shape_type", "negative", "out_of_bounds", "byte_count", "trailing", "overlap", "gap",
        "not_object"])
def test_malformed_safetensors_header_is_one_line(edit, message, tmp_path):
    folder = tiny_folder(tmp_path)
    header, data = _tensor_data(folder)
    header, data = edit(header, data)
    (folder / "model.safetensors").write_bytes(st_bytes(header, data))
    check_one_line(folder, r"model.safetensors: .*" + message)


def test_header_size_beyond_the_file_is_one_line(tmp_path):
    folder = tiny_folder(tmp_path)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2 ** 63) + b"{}")
    check_one_line(folder, r"model.safetensors: not a safetensors file \(header of")


@pytest.mark.parametrize("dtype, message", [
    (torch.int32, "holds int32 data; this weight needs floating-point numbers"),
    (torch.bool, "holds bool data; this weight needs floating-point numbers"),
    ("nan", "holds NaN or infinite values"), ("inf", "holds NaN or infinite values")])
def test_weights_must_be_finite_floats(dtype, message, tmp_path):
    from safetensors.torch import load_file, save_file
    folder = tiny_folder(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    w = state["model.norm.weight"]
    state["model.norm.weight"] = w.to(dtype) if isinstance(dtype, torch.dtype) else \
        torch.full_like(w, float(dtype))
    save_file(state, str(folder / "model.safetensors"))
    check_one_line(folder, f"'model.norm.weight' {message}")


def test_unaligned_tensors_load_their_exact_values(tmp_path):
    """Offsets that tile the data but are not multiples of the item size (legal safetensors) read correctly."""
    a, b = torch.arange(3, dtype=torch.float16), torch.randn(5)
    header = {"a": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]},
              "b": {"dtype": "F32", "shape": [5], "data_offsets": [6, 26]}}
    (tmp_path / "x.safetensors").write_bytes(st_bytes(header, a.numpy().tobytes() + b.numpy().tobytes()))
    out = checkpoints.read_safetensors(str(tmp_path / "x.safetensors"))
    assert torch.equal(out["a"], a) and torch.equal(out["b"], b)


def test_llama2c_header_that_promises_more_than_the_file_is_refused(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(struct.pack("7i", 4096, 11008, 32, 32, 32, 32000, 2048) + b"\0" * 64)
    msg = one_line_error(cli.model_main, [str(path), "--prompt", "hi", "--tokenizer", "tok512.model"])
    assert "header promises" in msg
    path.write_bytes(struct.pack("7i", 64, 64, 0, 8, 8, 32, 64) + b"\0" * 64)
    assert "not a legacy llama2.c export" in one_line_error(cli.model_main, [str(path), "--prompt", "hi"])


HOSTILE_TEMPLATES = {
    "nested_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string_times": "{{ 'ab' * 10**8 }}",
    "format_width": "{{ '%0999999999d' % 1 }}",
    "ljust": "{{ 'x'.ljust(10**9) }}",
    "center": "{{ 'x'|center(1000000000) }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "big_output": "{% for i in range(100000) %}{{ 'abcdefghij' * 100 }}{% endfor %}",
    "doubling": "{% set ns = namespace(x='a') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "doubling_plus": "{% set ns = namespace(x='a') %}{% for i in range(60) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
    "dunder": "{{ messages.__class__.__mro__ }}",
    "deep_parse": "{% if 1 %}" * 400 + "{% endif %}" * 400,
    "syntax": "{% for %}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_hostile_chat_template_is_one_line_in_bounded_time(name, monkeypatch):
    pytest.importorskip("jinja2")
    monkeypatch.setattr(chat, "RENDER_SECONDS", 1.0)

    class Tok:
        added, special_tokens = {}, {}
    template = chat.ChatTemplate(HOSTILE_TEMPLATES[name], Tok(), path="repo/chat_template.jinja")
    t0 = time.time()
    with pytest.raises(ValueError, match=r"^repo/chat_template.jinja: chat template \((parsing|rendering)\)"):
        template.render([{"role": "user", "content": "hi"}])
    assert time.time() - t0 < 8


@pytest.mark.parametrize("regex", [r"(a+)+$", r"(\w+\s?)*$", r"(?:x|y+){2,}z", r"a*a*a*a*a*b", r"(a|a)*b"])
def test_tokenizer_regex_that_cannot_finish_is_refused(regex, tmp_path):
    t0 = time.time()
    with pytest.raises(ValueError, match="Split regex .*(repeats a group that holds a repeat|still running)"):
        _pattern({"Regex": regex})
    assert time.time() - t0 < 8


def test_tokenizer_json_with_a_hostile_regex_is_one_line(tmp_path):
    tok = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
           "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    from support.tokenizer import load_tokenizer
    with pytest.raises(ValueError, match=r"tokenizer.json: Split regex '\(a\+\)\+\$' repeats a group"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match=r"tokenizer.json.*(nested too deeply|not valid JSON)"):
        load_tokenizer(tmp_path)


def test_published_pre_tokenizer_patterns_still_load():
    from support.hf_tokenizer import GPT2_PATTERN
    llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    qwen2 = llama3.replace(r"\p{N}{1,3}", r"\p{N}")
    for p in (GPT2_PATTERN, llama3, qwen2, r"\p{N}", r" ?\p{L}+"):
        assert _pattern({"Regex": p}).pattern


def test_plain_names(tmp_path):
    assert plain_name("model-00001-of-00002.safetensors", "x") == "model-00001-of-00002.safetensors"
    assert plain_name("sub/x.bin", "x") == "sub/x.bin"
    for bad in ("/abs", "../x", "a/../../x", "a\\b", "", "a//b", "./x", "a\x00b", "C:x", 5):
        with pytest.raises(ValueError):
            plain_name(bad, "x")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf{\"a\": 1}")
    assert read_json(str(tmp_path / "bom.json")) == {"a": 1}
