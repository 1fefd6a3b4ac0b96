"""Tokenizers, pure Python (ids equal transformers'): SentencePiece (LLaMA, llama2.c), GPT-2/RoBERTa byte-level BPE
and BERT WordPiece.

Tokenizers share one interface, so the rest of the code never needs to know which model family it feeds:
encode(text, bos=True, eos=False) -> ids; encode_pair(a, b) -> (ids, token_type_ids) with the model's own
special tokens (b None or "" means a single text, as in transformers); decode(ids) -> text without special
tokens; attributes vocab_size, bos_id, eos_id, pad_id, unk_id. Special-token strings inside the text (a
literal "<s>" or "[SEP]") are encoded as plain text, never as control tokens. load_tokenizer(path) picks:
SentencePieceTokenizer (LLaMA, llama2.c), HFTokenizer (a tokenizer.json: Llama 3.x, Qwen2/2.5, SmolLM2, ...;
support/hf_tokenizer.py), ByteBPETokenizer (RoBERTa, GPT-2) or WordPieceTokenizer (BERT).
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import sentencepiece as spm

from support.bpe import _WHITESPACE, _bytes_to_unicode, bpe_merge
from support.chat import load_chat_template
from support.hf_tokenizer import HFTokenizer, is_supported
from support.untrusted import json_object


class SentencePieceTokenizer:
    """A LLaMA-style SentencePiece model; encode(s, bos, eos) behaves like llama2.c's Tokenizer.encode."""

    def __init__(self, model_file: str | os.PathLike) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size: int = self.sp.vocab_size()
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        # LLaMA / llama2.c tokenizers are trained without a pad piece (pad_id() == -1), and -1 cannot index
        # an embedding table. Fall back to <unk> (id 0 there): with byte fallback encode never produces it,
        # and padded positions are masked out by the attention mask anyway.
        self.pad_id: int = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.unk_id

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        return [self.bos_id] * bos + self.sp.encode(text) + [self.eos_id] * eos

    def encode_pair(self, a: str, b: str | None = None) -> tuple[list[int], list[int]]:
        # A decoder-only LM has no separator token or segment embeddings, so a pair is read as the single
        # text "a b" after BOS, exactly as the model would see it in running text.
        ids = self.encode(f"{a} {b}" if b else a)
        return ids, [0] * len(ids)

    def decode(self, ids: list[int]) -> str:
        special = {self.bos_id, self.eos_id, self.pad_id, self.unk_id}
        return self.sp.decode([i for i in map(int, ids) if i not in special])


_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
def _char_kind(ch: str) -> str:
    """'s' whitespace, 'L' letter, 'N' number, 'o' anything else (punctuation, symbols, marks, emoji)."""
    if ch in _WHITESPACE:
        return "s"
    kind = unicodedata.category(ch)[0]
    return kind if kind in "LN" else "o"


def _gpt2_pretokenize(text: str) -> list[str]:
    r"""Split text into words exactly like GPT-2's regex, written as a scanner so it needs only the stdlib:
    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    BPE then runs inside each word, so merges never cross these boundaries."""
    kinds = [_char_kind(ch) for ch in text]
    words, i, n = [], 0, len(text)
    while i < n:
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if contraction:
            words.append(contraction)
            i += len(contraction)
            continue
        # ` ?X+`: a run of letters, numbers or "other", which may take one leading space with it; that is
        # why "Hello world" becomes "Hello", " world" and most vocabulary entries start with 'Ġ'.
        start = i + 1 if text[i] == " " and i + 1 < n and kinds[i + 1] != "s" else i
        end = start + 1
        while end < n and kinds[end] == kinds[start]:  # the run: letters, numbers, "other" or whitespace
            end += 1
        # `\s+(?!\S)`: a whitespace run followed by a word gives up its last space, which the word takes
        # ("a   b" -> "a", "  ", " b"); a single whitespace char before a word stays alone (`\s+`).
        if kinds[start] == "s" and end < n and end - i > 1:
            end -= 1
        words.append(text[i:end])
        i = end
    return words


class ByteBPETokenizer:
    """RoBERTa / GPT-2 byte-level BPE: text -> words (regex) -> UTF-8 bytes -> characters -> BPE merges.
    Every byte has a token, so nothing is ever unknown."""

    def __init__(self, vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> None:
        self.encoder: dict[str, int] = json_object(str(vocab_file))
        self.decoder = {i: token for token, i in self.encoder.items()}
        lines = Path(merges_file).read_text(encoding="utf-8").splitlines()
        # A merge's line number is its priority: the lower, the earlier it was learned and is applied.
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {ch: b for b, ch in self.byte_encoder.items()}
        self.cache: dict[str, list[str]] = {}  # words repeat a lot, and BPE is the slow part
        self.vocab_size: int = len(self.encoder)
        eot = self.encoder.get("<|endoftext|>")  # GPT-2's only special token, which then plays every role
        self.bos_id, self.eos_id, self.pad_id, self.unk_id, self.mask_id = (
            self.encoder.get(token, eot) for token in ("<s>", "</s>", "<pad>", "<unk>", "<mask>"))

    def _bpe(self, word: str) -> list[str]:
        if word not in self.cache:  # words repeat a lot, and BPE is the slow part
            self.cache[word] = bpe_merge(list(word), self.ranks)
        return self.cache[word]

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = [self.bos_id] * bos
        for word in _gpt2_pretokenize(text):
            chars = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids += [self.encoder.get(token, self.unk_id) for token in self._bpe(chars)]
        return ids + [self.eos_id] * eos

    def encode_pair(self, a: str, b: str | None = None) -> tuple[list[int], list[int]]:
        ids = self.encode(a, eos=True)  # <s> A </s>
        if b:  # RoBERTa separates the two segments with a doubled </s>: <s> A </s></s> B </s>
            ids += [self.eos_id] + self.encode(b, bos=False, eos=True)
        return ids, [0] * len(ids)  # RoBERTa has a single token type

    def decode(self, ids: list[int]) -> str:
        special = {self.bos_id, self.eos_id, self.pad_id, self.unk_id, self.mask_id}
        chars = "".join(self.decoder[i] for i in map(int, ids) if i not in special)
        # A token can end in the middle of a multi-byte character; show such broken bytes as U+FFFD.
        return bytes(self.byte_decoder[ch] for ch in chars).decode("utf-8", errors="replace")


# CJK ideographs are written without spaces, so BERT makes each one a word of its own.
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_punctuation(ch: str) -> bool:
    # BERT counts every non-alphanumeric ASCII character as punctuation, although Unicode calls some of
    # them symbols ("$", "+", "^", "`"); elsewhere it goes by the Unicode P* categories.
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or unicodedata.category(ch)[0] == "P"


class WordPieceTokenizer:
    """BERT's WordPiece: BasicTokenizer (clean, split on whitespace and punctuation) then greedy
    longest-match-first pieces from vocab.txt. [CLS] plays BOS and [SEP] plays EOS."""

    def __init__(self, vocab_file: str | os.PathLike, do_lower_case: bool = True, max_chars_per_word: int = 100) -> None:
        with open(vocab_file, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}  # one token per line, id = line number
        self.ids_to_tokens = {i: token for token, i in self.vocab.items()}
        self.do_lower_case, self.max_chars_per_word = do_lower_case, max_chars_per_word
        self.vocab_size: int = len(self.vocab)
        self.bos_id, self.eos_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad_id, self.unk_id, self.mask_id = self.vocab["[PAD]"], self.vocab["[UNK]"], self.vocab.get("[MASK]")

    def _basic_tokenize(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            category = unicodedata.category(ch)
            if ch in "\t\n\r" or category == "Zs":
                chars.append(" ")
            elif ch in "\x00\ufffd" or category[0] == "C":  # control / format / unassigned chars carry no text
                continue
            elif any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = "".join(chars)
        if self.do_lower_case:  # uncased models also drop accents: decompose, then remove combining marks
            # Lowercase char by char, like the reference (Rust) tokenizer; str.lower() on the whole text
            # would apply the final-sigma rule ("ΟΔΟΣ" -> "οδος") and give different ids.
            text = unicodedata.normalize("NFD", "".join(ch.lower() for ch in text))
            text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        return "".join(f" {c} " if _is_punctuation(c) else c for c in text).split()

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)  # take the longest vocabulary entry that starts here; later pieces carry "##"
            while end > start and ("##" * (start > 0) + word[start:end]) not in self.vocab:
                end -= 1
            if end == start:  # a stretch no entry covers makes the whole word unknown, not just that part
                return [self.unk_id]
            ids.append(self.vocab["##" * (start > 0) + word[start:end]])
            start = end
        return ids

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = [self.bos_id] * bos
        for word in self._basic_tokenize(text):
            ids += self._wordpiece(word)
        return ids + [self.eos_id] * eos

    def encode_pair(self, a: str, b: str | None = None) -> tuple[list[int], list[int]]:
        ids = self.encode(a, eos=True)  # [CLS] A [SEP]
        types = [0] * len(ids)
        if b:  # ... B [SEP], whose tokens get segment (token type) 1
            second = self.encode(b, bos=False, eos=True)
            ids, types = ids + second, types + [1] * len(second)
        return ids, types

    def decode(self, ids: list[int]) -> str:
        special = {self.bos_id, self.eos_id, self.pad_id, self.unk_id, self.mask_id}
        text = " ".join(self.ids_to_tokens[i] for i in map(int, ids) if i not in special)
        return text.replace(" ##", "").strip()


Tokenizer = SentencePieceTokenizer | ByteBPETokenizer | WordPieceTokenizer  # or support.hf_tokenizer.HFTokenizer
_EXPECTED = ("expected tokenizer.model, vocab.json+merges.txt, vocab.txt or a BPE tokenizer.json (or the path of a "
             ".model, vocab.txt or tokenizer.json file)")


def _json_or_empty(path: Path) -> dict:
    return json_object(str(path)) if path.is_file() else {}


def _bert_lowercases(directory: Path) -> bool:
    config = directory / "tokenizer_config.json"  # says whether a BERT checkpoint is cased; most are not
    return bool(_json_or_empty(config).get("do_lower_case", True))


def _hf_tokenizer(data: dict, folder: Path, source: Path):
    """HFTokenizer(tokenizer.json, tokenizer_config.json, folder); a malformed file is one line naming it."""
    try:
        config = _json_or_empty(folder / "tokenizer_config.json")
        tok = HFTokenizer(data, config, folder)
        tok.chat = load_chat_template(folder, config, tok)  # the instruct checkpoint's template, or None
        return tok
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError) as e:
        why = str(e) if isinstance(e, ValueError) else f"malformed ({type(e).__name__}: {e})"
        raise ValueError(why if why.startswith(str(folder)) else f"{source}: {why}") from None


def load_tokenizer(path: str | os.PathLike) -> "Tokenizer | HFTokenizer":
    """The tokenizer stored at `path`: a SentencePiece .model file, a tokenizer.json, a BERT vocab.txt, or a
    directory holding (first found) tokenizer.model (SentencePiece), tokenizer.json (BPE: Llama 3, Qwen2, SmolLM2,
    ...; support/hf_tokenizer.py), vocab.json + merges.txt (byte-level BPE) or vocab.txt (BERT)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {p}")
    if p.is_file():
        if p.suffix == ".model":
            return SentencePieceTokenizer(p)
        if p.name == "vocab.txt":
            return WordPieceTokenizer(p, _bert_lowercases(p.parent))
        data = _json_or_empty(p) if p.suffix == ".json" and p.name != "vocab.json" else {}
        if is_supported(data):  # a tokenizer.json (with the tokenizer_config.json beside it)
            return _hf_tokenizer(data, p.parent, p)
        raise ValueError(f"unsupported tokenizer file {p}: {_EXPECTED}")
    if (p / "tokenizer.model").is_file():
        return SentencePieceTokenizer(p / "tokenizer.model")
    data = _json_or_empty(p / "tokenizer.json")  # before vocab.json + merges.txt: Qwen2 and SmolLM2 ship both, and
    if is_supported(data):  # only tokenizer.json holds their rules (NFC, digit splits, added tokens)
        return _hf_tokenizer(data, p, p / "tokenizer.json")
    if (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
        return ByteBPETokenizer(p / "vocab.json", p / "merges.txt")
    if (p / "vocab.txt").is_file():
        return WordPieceTokenizer(p / "vocab.txt", _bert_lowercases(p))
    if (p / "tokenizer.json").is_file():
        kind = (data.get("model") if isinstance(data.get("model"), dict) else {}).get("type") or "unknown"
        raise ValueError(f"{p} has only tokenizer.json of a {kind} model, which is not supported (only BPE is): "
                         f"{_EXPECTED}")
    raise ValueError(f"no tokenizer found in {p}: {_EXPECTED}")
