"""Hugging Face tokenizer.json files of the BPE model type, pure Python (stdlib only); ids and decoded text equal the
`tokenizers` library's (tests/test_hf_tokenizer.py).

Covers what today's small decoders ship: byte-level BPE (Llama 3.x, Qwen2/2.5, SmolLM2, the GPT-2 family) and
SentencePiece-style BPE with byte fallback (Llama 2, Mistral and TinyLlama exports). Encoding runs the library's
pipeline in its order:
  1. added tokens: the text is cut at added-token strings (leftmost-longest), which become their ids, never split.
     Special ones are matched only in template text (`encode_template`); in a record's own text (`encode`) they are
     plain text, so a user cannot inject a turn. Non-special added tokens are matched in both, as the library does.
  2. normalizer on each remaining piece (NFC, Prepend, Replace, ...)
  3. pre-tokenizer: words (Split regexes, ByteLevel, Digits, Metaspace); ByteLevel maps each byte to a character
  4. BPE inside each word: merges by rank; `ignore_merges` keeps a word that is already in the vocabulary whole
  5. post-processor: the tokens around one text (Llama 3's BOS) when encode(..., bos=True)
Decoding runs the decoder chain (ByteLevel; or Replace, ByteFallback, Fuse, Strip for SentencePiece-style files).

Regexes: tokenizer.json's Split patterns are written for Oniguruma and use Unicode classes (\\p{L}, \\p{N}) that
Python's `re` lacks. `translate_regex` writes them out as explicit code-point ranges built from `unicodedata`, and
\\s as the Unicode White_Space set (Python's \\s also matches \\x1c-\\x1f, Oniguruma's does not); everything else these
patterns use (`(?i:...)`, `{1,3}`, lookahead) means the same in both engines. The classes follow the Unicode version
of Python's unicodedata (14.0 on Python 3.11), which can differ from the library's on characters assigned since.
"""
from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from pathlib import Path

from support.bpe import _WHITESPACE, _bytes_to_unicode, bpe_merge
from support.untrusted import time_limit

# -----------------------------------------------------------------------------------------------------------------
# Oniguruma patterns -> Python re


def _u(cp: int) -> str:
    return re.escape(chr(cp))  # a code point for a character class (its specials, such as "-" and "]", escaped)


# Letters, marks, numbers, punctuation, symbols and separators all live in planes 0-3 and 14 (4-13 are unassigned,
# 15-16 private use), so the table skips the rest: about 0.2 s, once per process.
@functools.lru_cache(maxsize=1)
def _category_runs() -> dict[str, list[tuple[int, int]]]:
    """{general category ("Lu", "Nd", ...): [(first, last) code point of each run of that category]}."""
    runs = {}
    for block in (range(0x40000), range(0xE0000, 0xE1000)):
        cp = block[0]
        for category, run in itertools.groupby(map(unicodedata.category, map(chr, block))):
            n = len(list(run))
            runs.setdefault(category, []).append((cp, cp + n - 1))
            cp += n
    return runs


@functools.lru_cache(maxsize=None)
def _category_class(name: str) -> str:
    """The inside of a re character class for \\p{name}: a general category ("Lu") or a major class ("L")."""
    if not re.fullmatch(r"[LMNPSZ][a-z]?", name):
        raise ValueError(f"regex class \\p{{{name}}} is not supported (supported: L, M, N, P, S, Z and their "
                         "subcategories)")
    ranges = sorted(r for category, runs in _category_runs().items() if category.startswith(name) for r in runs)
    return "".join(_u(a) if a == b else f"{_u(a)}-{_u(b)}" for a, b in ranges)


_WS_CLASS = "".join(_u(ord(c)) for c in sorted(_WHITESPACE))
# Oniguruma's Unicode \d and \w (Python's \w also takes No/Nl numbers and leaves out marks)
_ESCAPES = {"s": lambda: _WS_CLASS, "d": lambda: _category_class("Nd"),
            "w": lambda: _category_class("L") + _category_class("M") + _category_class("Nd") + _category_class("Pc")}


def translate_regex(pattern: str) -> str:
    """An Oniguruma pattern (tokenizer.json's Split regexes) -> the same pattern for Python's re: \\p{X}, \\P{X}, \\s,
    \\S, \\d, \\D, \\w, \\W become explicit character classes; everything else is copied."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            esc, negated, body, size = pattern[i + 1], False, None, 2
            if esc in "pP":
                m = re.match(r"\{(\^?)(\w+)\}|(\w)", pattern[i + 2:])
                if not m:
                    raise ValueError(f"bad \\{esc} class at {i} in {pattern!r}")
                negated, body, size = (esc == "P") != bool(m.group(1)), _category_class(m.group(2) or m.group(3)), \
                    2 + m.end()
            elif esc.lower() in _ESCAPES:
                negated, body = esc.isupper(), _ESCAPES[esc.lower()]()
            if body is None:  # another escape (\r, \n, \\, \., ...): the same in both engines
                out.append(pattern[i:i + 2])
            elif in_class and negated:
                raise ValueError(f"a negated class (\\{esc}) inside [...] is not supported: {pattern!r}")
            else:
                out.append(body if in_class else f"[{'^' * negated}{body}]")
            i += size
            continue
        if c == "[" and not in_class:
            in_class, i = True, i + 1
            out.append("[^" if pattern.startswith("^", i) else "[")
            i += pattern.startswith("^", i)
            if pattern.startswith("]", i):  # a "]" first in a class is a literal
                out.append("\\]")
                i += 1
            continue
        if c == "[" and in_class:
            raise ValueError(f"nested character classes are not supported: {pattern!r}")
        in_class = in_class and c != "]"
        out.append(c)
        i += 1
    return "".join(out)


# -----------------------------------------------------------------------------------------------------------------
# Splitting a string at matches, with the library's five behaviours (normalizer.rs, SplitDelimiterBehavior)


def _split(text: str, spans: list[tuple[int, int, bool]], behavior: str, invert: bool = False) -> list[str]:
    """spans cover text in order as (start, end, is_match); -> the non-empty pieces under `behavior`."""
    spans = [(a, b, m != invert) for a, b, m in spans]
    if behavior == "Removed":
        return [text[a:b] for a, b, m in spans if not m and b > a]
    if behavior == "Isolated":
        pieces = [[a, b] for a, b, _ in spans]
    elif behavior in ("MergedWithPrevious", "MergedWithNext", "Contiguous"):
        forward = behavior != "MergedWithNext"
        pieces, previous = [], False
        for a, b, m in spans if forward else reversed(spans):
            joins = (m and not previous) if behavior != "Contiguous" else (m == previous)
            if joins and pieces:
                pieces[-1][1 if forward else 0] = b if forward else a
            else:
                pieces.append([a, b])
            previous = m
        pieces = pieces if forward else pieces[::-1]
    else:
        raise ValueError(f"unknown split behavior {behavior!r}")
    return [text[a:b] for a, b in pieces if b > a]


def _regex_spans(regex: re.Pattern, text: str) -> list[tuple[int, int, bool]]:
    spans, prev = [], 0
    for m in regex.finditer(text):
        if m.start() > prev:
            spans.append((prev, m.start(), False))
        spans.append((m.start(), m.end(), True))
        prev = m.end()
    if prev < len(text):
        spans.append((prev, len(text), False))
    return spans


def _char_spans(pred, text: str) -> list[tuple[int, int, bool]]:
    """Every character for which pred holds is a match of its own, the text between them one gap (the library's
    Pattern for a char predicate)."""
    spans, prev = [], 0
    for i, c in enumerate(text):
        if pred(c):
            if i > prev:
                spans.append((prev, i, False))
            spans.append((i, i + 1, True))
            prev = i + 1
    if prev < len(text):
        spans.append((prev, len(text), False))
    return spans


def _is_numeric(c: str) -> bool:  # Rust's char::is_numeric: the general categories Nd, Nl, No
    return unicodedata.category(c)[0] == "N"


def _repeats_a_repeat(pattern: str) -> bool:
    """Whether a group that holds a repeat (*, +, {n,m}) is itself repeated, as in (a+)+ or (\\w+\\s?)*: the shape
    whose backtracking takes exponential time on a string that almost matches."""
    stack, i = [False], 0  # per open group: does it hold a repeat?
    repeat = re.compile(r"[*+]|\{\d*,\d*\}|\{\d*[2-9]\d*\}|\{\d{2,}\}")
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            m = re.match(r"\\[pP]\{[^}]*\}|\\.", pattern[i:], re.S)
            i += m.end()
            continue
        if c == "[":  # a character class: its contents are literal characters
            m = re.match(r"\[\^?\]?(\\.|[^\]\\])*\]", pattern[i:], re.S)
            i += m.end() if m else 1
            continue
        if c == "(":
            stack.append(False)
        elif c == ")" and len(stack) > 1:
            inner, repeated = stack.pop(), repeat.match(pattern, i + 1) is not None
            if inner and repeated:
                return True
            stack[-1] = stack[-1] or inner or repeated
        elif repeat.match(pattern, i):
            stack[-1] = True
        i += 1
    return False


REGEX_SECONDS = 2.0  # the probes below take milliseconds with every published pre-tokenizer pattern
_PROBES = [c * 1000 + end for c in ("a", "A", "1", " ", "\n", "'", ".", "é", "中", "_") for end in ("", "\x00", "!")]


def _pattern(p: dict) -> re.Pattern:
    """A tokenizer.json pattern {"String": s} or {"Regex": r} as a compiled Python re. A regex that cannot finish on
    ordinary text is refused here rather than hanging encode: a repeated group that holds a repeat, or any pattern
    that takes over REGEX_SECONDS on long runs of one character (letters, digits, spaces, newlines, ...)."""
    if not isinstance(p, dict) or not isinstance(p.get("String", p.get("Regex")), str):
        raise ValueError(f"pattern {p!r}: expected {{\"String\": ...}} or {{\"Regex\": ...}}")
    if "String" in p:
        return re.compile(re.escape(p["String"]))
    source = p["Regex"]
    if _repeats_a_repeat(source):
        raise ValueError(f"Split regex {source!r} repeats a group that holds a repeat (catastrophic backtracking): "
                         "refused")
    try:
        regex = re.compile(translate_regex(source))
    except re.error as e:
        raise ValueError(f"Split regex {source!r}: {e}") from None
    with time_limit(REGEX_SECONDS, f"Split regex {source!r} on a 1,000-character probe"):
        for text in _PROBES:
            for _ in regex.finditer(text):
                pass
    return regex


GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"  # ByteLevel use_regex


# -----------------------------------------------------------------------------------------------------------------
# The pipeline's parts, each built from its tokenizer.json entry


def _normalizer(spec: dict | None):
    """A function str -> str for tokenizer.json's "normalizer"."""
    if spec is None:
        return lambda s: s
    kind = spec["type"]
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda s: unicodedata.normalize(kind, s)
    if kind == "Sequence":
        steps = [_normalizer(n) for n in spec["normalizers"]]
        return functools.reduce(lambda f, g: lambda s: g(f(s)), steps, lambda s: s)
    if kind == "Prepend":
        return lambda s: spec["prepend"] + s if s else s
    if kind == "Replace":
        regex, content = _pattern(spec["pattern"]), spec["content"]
        return lambda s: regex.sub(lambda m: content, s)
    if kind == "Lowercase":  # char by char, as the library (str.lower would apply the final-sigma rule)
        return lambda s: "".join(c.lower() for c in s)
    if kind == "Strip":
        ws = "".join(_WHITESPACE)

        def strip(s):
            s = s.lstrip(ws) if spec["strip_left"] else s
            return s.rstrip(ws) if spec["strip_right"] else s
        return strip
    raise ValueError(f"tokenizer.json normalizer {kind!r} is not supported")


BYTE_CHARS = _bytes_to_unicode()  # GPT-2's byte -> printable character table (support/tokenizer.py)
CHAR_BYTES = {ch: b for b, ch in BYTE_CHARS.items()}


def _pre_tokenizer(spec: dict | None):
    """A function [(piece, starts_text)] -> [(word, starts_text)] for tokenizer.json's "pre_tokenizer"; starts_text
    says whether a piece begins the original text (Metaspace's prepend_scheme "first" needs it)."""
    def each(split_one):  # apply a str -> [str] split to every piece; only a first sub-piece keeps starts_text
        return lambda pieces: [(w, first and k == 0) for p, first in pieces for k, w in enumerate(split_one(p))]

    if spec is None:
        return lambda pieces: pieces
    kind = spec["type"]
    if kind == "Sequence":
        steps = [_pre_tokenizer(p) for p in spec["pretokenizers"]]
        return functools.reduce(lambda f, g: lambda ps: g(f(ps)), steps, lambda ps: ps)
    if kind == "Split":
        regex = _pattern(spec["pattern"])
        return each(lambda s: _split(s, _regex_spans(regex, s), spec["behavior"], spec.get("invert", False)))
    if kind == "Digits":
        behavior = "Isolated" if spec.get("individual_digits") else "Contiguous"
        return each(lambda s: _split(s, _char_spans(_is_numeric, s), behavior))
    if kind == "ByteLevel":
        regex = re.compile(translate_regex(GPT2_PATTERN)) if spec.get("use_regex", True) else None
        prefix = spec.get("add_prefix_space", False)

        def byte_level(s):
            s = " " + s if prefix and not s.startswith(" ") else s
            words = _split(s, _regex_spans(regex, s), "Isolated") if regex else [s]
            return ["".join(BYTE_CHARS[b] for b in w.encode("utf-8")) for w in words]
        return each(byte_level)
    if kind == "Metaspace":
        rep, scheme, split = spec["replacement"], spec.get("prepend_scheme", "always"), spec.get("split", True)

        def metaspace(pieces):
            out = []
            for s, first in pieces:
                s = s.replace(" ", rep)
                if not s.startswith(rep) and (scheme == "always" or (scheme == "first" and first)):
                    s = rep + s
                words = _split(s, _char_spans(lambda c: c == rep, s), "MergedWithNext") if split else [s]
                out += [(w, first and k == 0) for k, w in enumerate(words)]
            return out
        return metaspace
    raise ValueError(f"tokenizer.json pre_tokenizer {kind!r} is not supported")


def _decoder(spec: dict | None):
    """A function [token strings] -> [strings] for tokenizer.json's "decoder" (joined at the end)."""
    if spec is None:
        return lambda tokens: [" ".join(tokens)]
    kind = spec["type"]
    if kind == "Sequence":
        steps = [_decoder(d) for d in spec["decoders"]]
        return functools.reduce(lambda f, g: lambda t: g(f(t)), steps, lambda t: t)
    if kind == "ByteLevel":  # characters back to bytes; a token with a character outside the table is its own UTF-8
        def byte_level(tokens):
            raw = b"".join(bytes(CHAR_BYTES[c] for c in t) if all(c in CHAR_BYTES for c in t) else t.encode("utf-8")
                           for t in tokens)
            return [raw.decode("utf-8", errors="replace")]  # partial characters -> U+FFFD, as the library
        return byte_level
    if kind == "Replace":
        regex, content = _pattern(spec["pattern"]), spec["content"]
        return lambda tokens: [regex.sub(lambda m: content, t) for t in tokens]
    if kind == "Fuse":
        return lambda tokens: ["".join(tokens)]
    if kind == "Strip":
        ch, start, stop = spec["content"], spec["start"], spec["stop"]

        def strip(t):  # up to `start` leading and `stop` trailing copies of ch
            a = b = 0
            while a < min(start, len(t)) and t[a] == ch:
                a += 1
            while b < min(stop, len(t)) and t[len(t) - 1 - b] == ch:
                b += 1
            return t[a:max(a, len(t) - b)]
        return lambda tokens: [strip(t) for t in tokens]
    if kind == "ByteFallback":  # runs of <0xXX> tokens -> their bytes as text (invalid UTF-8: one U+FFFD per byte)
        def byte_fallback(tokens):
            out, run = [], []
            for t in tokens + [None]:
                if t is not None and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                    run.append(int(t[3:5], 16))
                    continue
                if run:
                    try:
                        out.append(bytes(run).decode("utf-8"))
                    except UnicodeDecodeError:
                        out += ["\ufffd"] * len(run)
                    run = []
                if t is not None:
                    out.append(t)
            return out
        return byte_fallback
    if kind == "Metaspace":  # the first token loses every replacement character (its prepended space)
        rep, drop_first = spec["replacement"], spec.get("prepend_scheme", "always") != "never"
        return lambda tokens: [t.replace(rep, "" if k == 0 and drop_first else " ") for k, t in enumerate(tokens)]
    raise ValueError(f"tokenizer.json decoder {kind!r} is not supported")


def _post_processor(spec: dict | None) -> tuple[list[int], list[int]]:
    """(ids before, ids after) one text for tokenizer.json's "post_processor" (Llama 3: [BOS], [])."""
    if spec is None or spec["type"] == "ByteLevel":  # ByteLevel only adjusts offsets
        return [], []
    kind = spec["type"]
    if kind == "Sequence":
        before, after = [], []
        for p in spec["processors"]:
            b, a = _post_processor(p)
            before, after = b + before, after + a
        return before, after
    if kind == "TemplateProcessing":
        items = spec["single"]
        seq = next(k for k, it in enumerate(items) if "Sequence" in it)
        ids = [[i for it in part for i in spec["special_tokens"][it["SpecialToken"]["id"]]["ids"]]
               for part in (items[:seq], items[seq + 1:])]
        return ids[0], ids[1]
    if kind in ("RobertaProcessing", "BertProcessing"):
        return [spec["cls"][1]], [spec["sep"][1]]
    raise ValueError(f"tokenizer.json post_processor {kind!r} is not supported")


# -----------------------------------------------------------------------------------------------------------------
# The tokenizer

# Markers around text that must stay plain inside template text (support/chat.py wraps special-token strings found
# in the messages with them); the same private-use characters transformers' sanitize_control_tokens uses.
PLAIN_START, PLAIN_END = "\U000f0000", "\U000f0001"


def _token_content(value) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ..., ...}."""
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer:
    """A tokenizer.json of the BPE model type, with the tokenizer_config.json beside it (the special tokens' roles, the
    chat template) if there is one. Same interface as support/tokenizer.py's tokenizers, plus encode_template for
    template text and `chat` (a support/chat.py ChatTemplate, or None).

    bos_id is the post-processor's first token (Llama 3's <|begin_of_text|>) or tokenizer_config's bos_token; Qwen2
    has none, and its encode(..., bos=True) adds nothing, as the library does. eos_id and pad_id come from
    tokenizer_config.json (pad falls back to eos, then 0: padded positions are masked anyway)."""

    def __init__(self, data: dict, config: dict | None = None, folder: str | Path | None = None) -> None:
        model, config = data["model"], config or {}
        if model.get("type", "BPE") != "BPE":
            raise ValueError(f"tokenizer.json model {model.get('type')!r} is not supported (BPE only)")
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise ValueError("tokenizer.json BPE with continuing_subword_prefix / end_of_word_suffix is not supported")
        self.vocab: dict[str, int] = model["vocab"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # a merge's position is its priority
        self.ignore_merges, self.byte_fallback = model.get("ignore_merges", False), model.get("byte_fallback", False)
        self.fuse_unk, unk = model.get("fuse_unk", False), model.get("unk_token")
        added = data.get("added_tokens", [])
        if any(t.get("single_word") for t in added):
            raise ValueError("tokenizer.json added tokens with single_word are not supported")
        self.added = {t["content"]: t for t in added}
        self.token_to_id = {**self.vocab, **{t["content"]: t["id"] for t in added}}
        self.id_to_token = {i: s for s, i in self.token_to_id.items()}
        self.special_ids = {t["id"] for t in added if t.get("special")}
        self.vocab_size: int = max(self.id_to_token) + 1
        self.normalize = _normalizer(data.get("normalizer"))
        self.pre_tokenize = _pre_tokenizer(data.get("pre_tokenizer"))
        self.decode_chain = _decoder(data.get("decoder"))
        self.before, self.after = _post_processor(data.get("post_processor"))
        # added tokens are matched on the raw text, or (normalized: true) on each normalized piece
        self._match_plain = self._matcher([t for t in added if not t.get("special") and not t.get("normalized")])
        self._match_template = self._matcher([t for t in added if not t.get("normalized")], plain_marks=True)
        self._match_normalized = self._matcher([t for t in added if t.get("normalized") and not t.get("special")],
                                               normalize=True)
        self._match_normalized_all = self._matcher([t for t in added if t.get("normalized")], normalize=True)
        self.cache: dict[str, list[int]] = {}
        # roles, from tokenizer_config.json: strings for chat templates, ids for training and generation
        self.special_tokens = {k: _token_content(config[k]) for k in ("bos_token", "eos_token", "unk_token",
                               "sep_token", "pad_token", "cls_token", "mask_token") if _token_content(config.get(k))}
        role = {k: self.token_to_id.get(v) for k, v in self.special_tokens.items()}
        self.bos_id = self.before[0] if self.before else role.get("bos_token")
        self.eos_id = role.get("eos_token")
        self.unk_id = self.token_to_id.get(unk) if unk else None
        self.pad_id: int = next((i for i in (role.get("pad_token"), self.eos_id, self.bos_id) if i is not None), 0)
        self.chat = None  # the folder's chat template, attached by support/tokenizer.load_tokenizer

    # -- matching added tokens

    def _matcher(self, tokens: list[dict], plain_marks: bool = False, normalize: bool = False):
        """A function text -> [(start, end, id)] of added-token matches, leftmost-longest; lstrip/rstrip tokens take
        the whitespace beside them. plain_marks: text between PLAIN_START and PLAIN_END is skipped (never matched)."""
        contents = {(self.normalize(t["content"]) if normalize else t["content"]): t for t in tokens}
        alternatives = [re.escape(c) for c in sorted(contents, key=len, reverse=True)]
        if plain_marks:
            alternatives.insert(0, f"{PLAIN_START}[^{PLAIN_END}]*{PLAIN_END}")
        if not contents:
            return lambda text: []
        regex = re.compile("|".join(alternatives))

        def find(text: str) -> list[tuple[int, int, int]]:
            found, pos = [], 0
            while m := regex.search(text, pos):
                start, end, token = m.start(), m.end(), contents.get(m.group())
                if token is None:  # a plain-marked stretch: skip it
                    pos = end
                    continue
                if token.get("lstrip"):
                    while start > pos and text[start - 1] in _WHITESPACE:
                        start -= 1
                if token.get("rstrip"):
                    while end < len(text) and text[end] in _WHITESPACE:
                        end += 1
                found.append((start, end, token["id"]))
                pos = end
            return found
        return find

    # -- encoding

    def _bpe(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized word: repeatedly merge the adjacent pair of lowest rank (all its occurrences,
        left to right) until no neighbours form a known merge."""
        if word in self.cache:
            return self.cache[word]
        if self.ignore_merges and word in self.vocab:
            self.cache[word] = [self.vocab[word]]
            return self.cache[word]
        parts = list(word)
        parts = bpe_merge(parts, self.ranks)
        ids, unk_before = [], False
        for part in parts:
            if part in self.vocab:
                ids.append(self.vocab[part])
                unk_before = False
                continue
            fallback = [self.vocab.get(f"<0x{b:02X}>") for b in part.encode("utf-8")] if self.byte_fallback else [None]
            if None not in fallback:  # SentencePiece-style: an unknown character as its UTF-8 bytes
                ids += fallback
                unk_before = False
            elif self.unk_id is not None:  # else the unknown token (one for a run, with fuse_unk); without it, dropped
                if not (self.fuse_unk and unk_before):
                    ids.append(self.unk_id)
                unk_before = True
        self.cache[word] = ids
        return ids

    def _encode_piece(self, text: str, starts_text: bool, match_normalized) -> list[int]:
        """Text between added tokens: normalize, match normalized added tokens, pre-tokenize each stretch, BPE."""
        text = self.normalize(text)
        ids, pos = [], 0
        for start, end, token_id in match_normalized(text) + [(len(text), len(text), None)]:
            if start > pos:
                for word, _ in self.pre_tokenize([(text[pos:start], starts_text and pos == 0)]):
                    ids += self._bpe(word)
            if token_id is not None:
                ids.append(token_id)
            pos = end
        return ids

    def _encode(self, text: str, matches, match_normalized, template: bool = False) -> list[int]:
        ids, pos = [], 0
        for start, end, token_id in matches + [(len(text), len(text), None)]:
            if start > pos:
                plain = text[pos:start]
                if template:  # marked stretches are plain text: drop the markers
                    plain = plain.replace(PLAIN_START, "").replace(PLAIN_END, "")
                ids += self._encode_piece(plain, pos == 0, match_normalized)
            if token_id is not None:
                ids.append(token_id)
            pos = end
        return ids

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """A record's own text: special-token strings in it are plain text. bos: the post-processor's tokens around
        the text (the library's add_special_tokens=True); eos: eos_id at the end."""
        if eos and self.eos_id is None:
            raise ValueError("this tokenizer has no eos_token (tokenizer_config.json)")
        ids = self._encode(text, self._match_plain(text), self._match_normalized)
        return self.before * bos + ids + self.after * bos + [self.eos_id] * eos

    def encode_template(self, text: str) -> list[int]:
        """Template text (a rendered chat): added and special tokens are matched and never split; stretches marked
        PLAIN_START ... PLAIN_END are plain text. Nothing is added around it: a template writes its own BOS."""
        return self._encode(text, self._match_template(text), self._match_normalized_all, template=True)

    def encode_pair(self, a: str, b: str | None = None) -> tuple[list[int], list[int]]:
        ids = self.encode(f"{a} {b}" if b else a)  # a decoder reads a pair as one running text, as SentencePiece's
        return ids, [0] * len(ids)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of ids without special tokens (the library's skip_special_tokens=True); skip_special=False keeps them
        as their text (a chat prompt as the model saw it), the runs between them decoded as usual."""
        ids = [i for i in map(int, ids) if i in self.id_to_token]
        if skip_special:
            return "".join(self.decode_chain([self.id_to_token[i] for i in ids if i not in self.special_ids]))
        out, run = [], []
        for i in ids + [None]:
            if i is None or i in self.special_ids:
                out.append("".join(self.decode_chain([self.id_to_token[j] for j in run])) if run else "")
                out.append(self.id_to_token[i] if i is not None else "")
                run = []
            else:
                run.append(i)
        return "".join(out)


def is_supported(data: dict) -> bool:
    """Whether HFTokenizer reads this tokenizer.json for a decoder: a BPE model; RoBERTa's (RobertaProcessing) stays
    with ByteBPETokenizer, whose encode_pair writes the encoder's separators."""
    pp, model = data.get("post_processor") or {}, data.get("model") or {}
    pp = pp.get("type") if isinstance(pp, dict) else None
    return isinstance(model, dict) and model.get("type") == "BPE" and pp not in ("RobertaProcessing", "BertProcessing")
