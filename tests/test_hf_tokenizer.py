"""support/hf_tokenizer.py against the `tokenizers` library (and transformers' tokenizer) on tokenizer.json files
trained here in the configurations of Llama 3.x, Qwen2/2.5, SmolLM2, GPT-2 and SentencePiece exports (tests/hf_folders.py).

Ids (with and without the post-processor's BOS, special-token strings as plain text and as tokens) and decoded text
(every prefix of every encoding, so partial UTF-8 characters are checked) must equal the library's on a broad sample.
"""
import json
import random
import re

import pytest

pytest.importorskip("tokenizers", reason="tokenizers (the reference library) not installed")
from tokenizers import Tokenizer  # noqa: E402

import hf_folders as H  # noqa: E402
from support import hf_tokenizer  # noqa: E402
from support.hf_tokenizer import HFTokenizer  # noqa: E402
from support.tokenizer import ByteBPETokenizer, load_tokenizer  # noqa: E402

FAMILIES = ["llama3", "qwen2", "smollm2", "gpt2", "sentencepiece", "sentencepiece_legacy"]

SAMPLE = [
    "Hello world", "The quick brown fox jumps over the lazy dog.", "  leading spaces", "trailing spaces   ",
    "multiple    spaces   between  words", "tabs\tand\nnewlines\n\nhere\r\n  \n", "x\n \n y", "\t\t\tindent",
    "3.14 and 1,000,000 and 1234567890", "²³ ½ Ⅷ ١٢٣ ９９", "!!!...??? --- ##",
    "I'm can't we'll they've she'd it's THEY'RE 'tis I'M 'S 'ſ",  # (?i:'s|...), and ſ folds to s
    "café naïve Zürich e\u0301 (NFD e + combining accent)", "你好世界 こんにちは 안녕하세요", "Ωμέγα ΣΊΣΥΦΟΣ Привет",
    "👍🏽 ok 🤷‍♀️ emoji🙂🙂text", "\u00a0non-breaking\u00a0space and\u3000ideographic\u2028line\x1cfs\x1d\x85",
    "<|eot_id|> inside <|begin_of_text|>text <|im_start|>user\n<|im_end|> <tool_call>x</tool_call> <s></s><unk>",
    "", " ", "\n", "a", "'", "a'b's 'S", "def f(x):\n    return x**2  # comment\n",
]


def broad_sample(seed: int = 0, n: int = 150) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab cdé漢😀1 2\n\t'sS,.!?\u00a0\u3000\x1c0９Ⅻ'<|>_eot"
    return SAMPLE + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(our tokenizer, the library's) for one family's tokenizer.json."""
    ref = H.train_tokenizer(request.param)
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    ref.save(str(path))
    return load_tokenizer(path), Tokenizer.from_file(str(path)), request.param


def test_ids_equal_the_library(pair):
    ours, ref, family = pair
    assert isinstance(ours, HFTokenizer)
    for text in broad_sample():
        ref.encode_special_tokens = True  # a record's own text: special-token strings are plain text
        for bos in (True, False):
            assert ours.encode(text, bos=bos) == ref.encode(text, add_special_tokens=bos).ids, (family, text, bos)
        ref.encode_special_tokens = False  # template text: special tokens matched
        assert ours.encode_template(text) == ref.encode(text, add_special_tokens=False).ids, (family, text)


def test_decoded_text_equals_the_library(pair):
    """Every prefix of every encoding: cut multi-byte characters decode to U+FFFD as the library does."""
    ours, ref, family = pair
    partial = 0
    for text in broad_sample(seed=1, n=60):
        ids = ref.encode(text).ids
        for k in range(len(ids) + 1):
            text_k = ref.decode(ids[:k], skip_special_tokens=True)
            assert ours.decode(ids[:k]) == text_k, (family, text, k)
            partial += "\ufffd" in text_k
    assert partial > 0  # the sample did cut characters


def test_special_tokens_are_plain_text_in_records_and_tokens_in_templates(tmp_path):
    ours = load_tokenizer(H.save_tokenizer(H.train_tokenizer("llama3"), tmp_path, "llama3"))
    eot, bos = ours.token_to_id["<|eot_id|>"], ours.token_to_id["<|begin_of_text|>"]
    text = "a<|eot_id|>b"
    assert eot not in ours.encode(text) and ours.decode(ours.encode(text)) == text
    assert ours.encode_template(text).count(eot) == 1
    assert ours.encode("hi", bos=True)[0] == bos == ours.bos_id and ours.encode("hi", bos=False)[0] != bos
    # a stretch marked plain stays text even inside template text (how support/chat.py protects messages)
    marked = f"x{hf_tokenizer.PLAIN_START}<|eot_id|>{hf_tokenizer.PLAIN_END}y<|eot_id|>"
    assert ours.encode_template(marked) == ours.encode("x<|eot_id|>y", bos=False) + [eot]


def test_transformers_tokenizer_agrees(tmp_path):
    """The folder as transformers loads it (tokenizer_class as the hub repos name it) gives the same ids and text."""
    transformers = pytest.importorskip("transformers")
    for family in ("llama3", "qwen2", "smollm2"):
        folder = H.save_tokenizer(H.train_tokenizer(family), tmp_path / family, family)
        ours, ref = load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
        for text in SAMPLE[:17]:
            ids = ref(text).input_ids
            assert ours.encode(text) == ids, (family, text)
            assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), (family, text)
        assert ours.eos_id == ref.eos_token_id and ours.bos_id == ref.bos_token_id
        assert ours.vocab_size == len(ref)


def test_regex_translation_keeps_oniguruma_meaning():
    """\\p{L} / \\p{N} become explicit classes; \\s is Unicode White_Space (Python's \\s also takes \\x1c-\\x1f)."""
    regex = re.compile(hf_tokenizer.translate_regex(r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+"))
    assert regex.findall("añ你1²Ⅻ \u3000\x1c!") == ["añ你", "1²Ⅻ", " \u3000", "\x1c!"]
    assert re.compile(hf_tokenizer.translate_regex(r"\S+")).findall("a\x1cb c") == ["a\x1cb", "c"]
    with pytest.raises(ValueError, match=r"\\p\{Co\} is not supported"):
        hf_tokenizer.translate_regex(r"\p{Co}")


def test_folder_prefers_tokenizer_json_but_roberta_keeps_its_tokenizer(tmp_path):
    """Qwen2 and SmolLM2 repos ship vocab.json + merges.txt too; only tokenizer.json has their rules (NFC, digits)."""
    tok = H.train_tokenizer("qwen2")
    tok.save(str(tmp_path / "tokenizer.json"))
    tok.model.save(str(tmp_path))  # vocab.json + merges.txt
    assert isinstance(load_tokenizer(tmp_path), HFTokenizer)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                              "trim_offsets": True, "add_prefix_space": False}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert isinstance(load_tokenizer(tmp_path), ByteBPETokenizer)  # an encoder's: encode_pair writes </s></s>


def test_unsupported_parts_are_clear_errors(tmp_path):
    data = json.loads(H.train_tokenizer("gpt2").to_str())
    data["pre_tokenizer"] = {"type": "BertPreTokenizer"}
    with pytest.raises(ValueError, match="pre_tokenizer 'BertPreTokenizer' is not supported"):
        HFTokenizer(data)
    data = json.loads(H.train_tokenizer("gpt2").to_str())
    data["model"]["type"] = "WordPiece"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tokenizer.json of a WordPiece model, which is not supported \(only BPE"):
        load_tokenizer(tmp_path)
