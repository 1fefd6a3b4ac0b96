"""Data for the ReFT reference implementation: tokenizers and datasets.

Tokenizers share one interface, so the rest of the code never needs to know which model family it feeds:
encode(text, bos=True, eos=False) -> ids; encode_pair(a, b) -> (ids, token_type_ids) with the model's own
special tokens (b None or "" means a single text, as in transformers); decode(ids) -> text without special
tokens; attributes vocab_size, bos_id, eos_id, pad_id, unk_id. Special-token strings inside the text (a
literal "<s>" or "[SEP]") are encoded as plain text, never as control tokens. load_tokenizer(path) picks:
SentencePieceTokenizer (LLaMA, llama2.c), ByteBPETokenizer (RoBERTa, GPT-2) or WordPieceTokenizer (BERT).
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import unicodedata
from pathlib import Path

import sentencepiece as spm
import torch

from reft import num_groups

# ---------------------------------------------------------------------------------------------- tokenizers


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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character table. BPE works on strings, and a vocab.json full of raw
    spaces and control bytes would be unreadable, so the 188 printable bytes stand for themselves and the
    other 68 (space, control, ...) are shifted to the unused characters 256..323 (space becomes 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# The Unicode White_Space property, which is what \s means in GPT-2's regex (Python's str.isspace differs).
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}


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
        self.encoder: dict[str, int] = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
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
        """Repeatedly merge the adjacent pair with the lowest rank (everywhere it occurs) until no pair of
        neighbours is a known merge."""
        if word not in self.cache:
            parts = list(word)
            while len(parts) > 1:
                pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, math.inf))
                if pair not in self.ranks:
                    break
                merged, i = [], 0
                while i < len(parts):
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            self.cache[word] = parts
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


Tokenizer = SentencePieceTokenizer | ByteBPETokenizer | WordPieceTokenizer
_EXPECTED = "expected tokenizer.model, vocab.json+merges.txt, or vocab.txt (or the path of a .model or vocab.txt file)"


def _bert_lowercases(directory: Path) -> bool:
    config = directory / "tokenizer_config.json"  # says whether a BERT checkpoint is cased; most are not
    return bool(json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True)) if config.is_file() else True


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer stored at `path`: a SentencePiece .model file, a BERT vocab.txt, or a directory
    holding tokenizer.model (SentencePiece), vocab.json + merges.txt (byte-level BPE) or vocab.txt (BERT)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {p}")
    if p.is_file():
        if p.suffix == ".model":
            return SentencePieceTokenizer(p)
        if p.name == "vocab.txt":
            return WordPieceTokenizer(p, _bert_lowercases(p.parent))
        raise ValueError(f"unsupported tokenizer file {p}: {_EXPECTED}")
    if (p / "tokenizer.model").is_file():
        return SentencePieceTokenizer(p / "tokenizer.model")
    if (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
        return ByteBPETokenizer(p / "vocab.json", p / "merges.txt")
    if (p / "vocab.txt").is_file():
        return WordPieceTokenizer(p / "vocab.txt", _bert_lowercases(p))
    if (p / "tokenizer.json").is_file():
        raise ValueError(f"{p} has only tokenizer.json (HF fast-tokenizer format), which is not supported: {_EXPECTED}")
    raise ValueError(f"no tokenizer found in {p}: {_EXPECTED}")


# -----------------------------------------------------------------------------------------------------------------
# Instruction data: records -> (prompt, response) -> token ids, labels and ReFT positions

TEMPLATES = {
    # Stanford Alpaca's prompt (used by the ReFT paper's instruction-tuning runs), with and without an input
    "alpaca": ("Below is an instruction that describes a task, paired with an input that provides further context. "
               "Write a response that appropriately completes the request.\n\n"
               "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    "alpaca_no_input": ("Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"),
    # a plain chat-free default: the instruction (and input) as they are, then a newline
    "plain": "{instruction}\n{input}\n",
    "plain_no_input": "{instruction}\n",
}


def format_prompt(record: dict, template: str) -> str:
    """The prompt text of one record under a template.

    template "raw": no template: `prompt` verbatim (instruction records: instruction, a newline, the input).
    template "alpaca" / "plain": the TEMPLATES above, filled from instruction+input (or prompt as the instruction).
    template "auto": raw for prompt/response records, alpaca for instruction/input/output records.
    """
    instruction = record.get("instruction", record.get("prompt", ""))
    inp = record.get("input") or ""
    if template == "auto":
        template = "raw" if "prompt" in record else "alpaca"
    if template == "raw":
        return record["prompt"] if "prompt" in record else instruction + ("\n" + inp if inp else "")
    if template not in ("alpaca", "plain"):
        raise ValueError(f"unknown template {template!r}: expected auto, raw, alpaca or plain")
    return TEMPLATES[template if inp else template + "_no_input"].format(instruction=instruction, input=inp)


def _check_record(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "prompt" in rec or "response" in rec:
        need = ("prompt", "response")
    elif "instruction" in rec or "output" in rec:
        need = ("instruction", "output")
    else:
        raise ValueError(f"{where}: no prompt/response or instruction/output fields (has: {', '.join(rec) or 'none'})")
    for key in need + (("input",) if "input" in rec else ()):
        if key not in rec:
            raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(rec[key], str):
            raise ValueError(f"{where}: field {key!r} must be a string, got {type(rec[key]).__name__}")
        if key != "input" and not rec[key].strip():
            raise ValueError(f"{where}: field {key!r} is empty")
    return rec


def read_jsonl(path: str) -> list[tuple[object, str]]:
    """(record, "file:line") for every non-blank line of a .jsonl file; invalid JSON is an error naming the line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):  # file lines end at \n only (str.splitlines would also split at U+2028)
            if line.strip():
                try:
                    records.append((json.loads(line), f"{path}:{n}"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return records


def read_records(path: str) -> list[dict]:
    """Records from a .jsonl file (one object per line, blank lines skipped) or a .json file (a list of objects).
    Errors name the file and line (or record index)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.endswith(".jsonl"):
        records = read_jsonl(path)
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records (or use .jsonl, one record per line)")
        records = [(rec, f"{path}: record {i}") for i, rec in enumerate(data)]
    if not records:
        raise ValueError(f"{path}: no records")
    return [_check_record(rec, where) for rec, where in records]


def response_of(record: dict) -> str:
    return record["response"] if "response" in record else record["output"]


def tokenize_examples(records, tok, template: str = "auto", max_length: int = 512, eos_id: int | None = None
                      ) -> list[dict]:
    """Each record -> {input_ids, labels, prompt_len}. The prompt is tokenised on its own (with BOS), so prompt_len
    is exact and equals what generation will see; the response follows with EOS. Labels are -100 on the prompt, so
    the loss covers response tokens + EOS only (ReFT eq. 4). eos_id: the model's end token (default the tokenizer's). Sequences longer than max_length are cut at the end
    (a warning counts them); an example whose prompt alone fills max_length is skipped (counted)."""
    out, cut, skipped = [], 0, 0
    for rec in records:
        prompt = tok.encode(format_prompt(rec, template), bos=True)
        response = tok.encode(response_of(rec), bos=False) + [tok.eos_id if eos_id is None else eos_id]
        ids = prompt + response
        if len(prompt) >= max_length:
            skipped += 1
            continue
        if len(ids) > max_length:
            cut, ids = cut + 1, ids[:max_length]
        out.append({"input_ids": ids, "labels": [-100] * len(prompt) + ids[len(prompt):], "prompt_len": len(prompt),
                    "record": rec})
    if cut or skipped:
        print(f"warning: {cut} example(s) truncated to max_length={max_length}, {skipped} skipped because the prompt "
              f"alone is that long", file=sys.stderr)
    if not out:
        raise ValueError(f"no usable examples: every prompt is at least max_length={max_length} tokens")
    return out


def split_heldout(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic held-out split: the last `fraction` of a seeded permutation."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = int(round(len(examples) * fraction)) if len(examples) > 1 else 0
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def reft_positions(prompt_len: int, first: int, last: int, share_weights: bool, offset: int = 0) -> torch.Tensor:
    """The "fA+lB" positions of one prompt as a LongTensor [G, n]: G position groups, n slots, -1 = empty slot.

    Short prompts follow the paper (§4.1): A <- min(A, floor(n/2)) and B <- min(B, ceil(n/2)) when both are used, so
    the groups never overlap; with only fA (or lB), min(A, n). Untied weights (share_weights False, both A and B > 0)
    give two groups, one per intervention set; otherwise one group. `offset` shifts indices (left padding).

    Worked example, prompt_len 5, "f2+l2", offset 3 (three pad tokens on the left):
        untied: [[3, 4], [6, 7]]           tokens 0,1 and 3,4 of the prompt
        tied:   [[3, 4, 6, 7]]
    prompt_len 3, "f2+l2" untied: A=1, B=2 -> [[0, -1], [1, 2]].
    """
    a = min(first, prompt_len // 2 if last else prompt_len)
    b = min(last, (prompt_len + 1) // 2 if first else prompt_len)
    head = [offset + i for i in range(a)]
    tail = [offset + prompt_len - b + i for i in range(b)]
    if num_groups(first, last, share_weights) == 1:
        groups = [head + tail + [-1] * (first + last - a - b)]
    else:
        n = max(first, last)
        groups = [head + [-1] * (n - a), tail + [-1] * (n - b)]
    return torch.tensor(groups, dtype=torch.long)


def collate(examples: list[dict], pad_id: int, first: int = 0, last: int = 0, share_weights: bool = False,
            padding_side: str = "right", with_labels: bool = True) -> dict:
    """Pad a list of examples to the longest one (dynamic padding).

    Returns input_ids [B, T], attention_mask [B, T], prompt_mask [B, T] (1 on prompt tokens), positions [B, G, n]
    (when first + last > 0) and labels [B, T] (-100 on prompt and padding). Training pads on the right; generation
    pads prompts on the left (with_labels False, the prompt only) so that the next token is at the end of every row.
    """
    seqs = [e["input_ids"] if with_labels else e["input_ids"][:e["prompt_len"]] for e in examples]
    T = max(len(s) for s in seqs)
    batch = {k: torch.full((len(seqs), T), v, dtype=torch.long)
             for k, v in (("input_ids", pad_id), ("attention_mask", 0), ("prompt_mask", 0), ("labels", -100))}
    positions = []
    for i, (e, s) in enumerate(zip(examples, seqs)):
        start = T - len(s) if padding_side == "left" else 0  # first real token of row i
        sl = slice(start, start + len(s))
        batch["input_ids"][i, sl] = torch.tensor(s)
        batch["attention_mask"][i, sl] = 1
        batch["prompt_mask"][i, start:start + e["prompt_len"]] = 1
        if with_labels:
            batch["labels"][i, sl] = torch.tensor(e["labels"])
        if first + last:
            positions.append(reft_positions(e["prompt_len"], first, last, share_weights, offset=start))
    if positions:
        batch["positions"] = torch.stack(positions)
    if not with_labels:
        del batch["labels"]
    return batch


# -----------------------------------------------------------------------------------------------------------------
# Classification data: a text (or a text pair) and a label per record. The whole input is the "prompt", so "fA"
# positions are its first A tokens from <s>/[CLS] (the paper's GLUE setting), and PEDRO pools over all of it.

# Columns, first match wins. Our own files: text [, text_pair] and label, or score for a regression target (STS-B).
# GLUE's TSVs (MNLI, MRPC, QNLI, QQP, RTE, SST-2, STS-B) use the other names; CoLA's have no header (4 columns).
TEXT_COLUMNS = [("#1 String", "#2 String"), ("question1", "question2"), ("question", "sentence"),
                ("sentence1", "sentence2"), ("premise", "hypothesis"), ("text", "text_pair"), ("sentence", None),
                ("text", None)]
LABEL_COLUMNS = ["label", "gold_label", "Quality", "is_duplicate", "score"]
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]
GLUE_TASKS = {("sentence1", "gold_label"): "mnli", ("#1 String", "Quality"): "mrpc", ("question", "label"): "qnli",
              ("question1", "is_duplicate"): "qqp", ("sentence1", "label"): "rte", ("sentence", "label"): "sst2",
              ("sentence1", "score"): "stsb"}  # (text column, label column) -> GLUE task (rte's layout is WNLI's too)
MAIN_METRIC = {"cola": "mcc", "stsb": "pearson"}  # the paper's metric per task (accuracy for the others)


def _rows(path: str) -> tuple[list[str], list[tuple[dict, str]]]:
    """The columns and (row, "file:line") pairs of a .jsonl, .csv or .tsv file (TSV as GLUE writes it: no quoting)."""
    if path.endswith(".jsonl"):
        rows = read_jsonl(path)
        return (list(rows[0][0]) if rows and isinstance(rows[0][0], dict) else []), rows
    if not path.endswith((".csv", ".tsv")):
        raise ValueError(f"{path}: classification data must be .jsonl, .csv or .tsv")
    with open(path, encoding="utf-8", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if path.endswith(".tsv") else csv.reader(f))
    if lines and len(lines[0]) == 4 and lines[0][1] in ("0", "1"):  # CoLA: data from the first line on
        lines = [COLA_COLUMNS] + lines
    head = lines[0] if lines else []
    rows = [(dict(zip(head, row)), f"{path}:{n}") for n, row in enumerate(lines[1:], 2) if len(row) == len(head)]
    if len(rows) < len(lines) - 1:  # GLUE's QQP and MNLI hold a few broken lines
        print(f"warning: {path}: {len(lines) - 1 - len(rows)} row(s) with a wrong field count skipped", file=sys.stderr)
    return head, rows


def read_classification(path: str, like: dict | None = None) -> tuple[list[dict], dict]:
    """Records {text, pair (None for single texts), label (str; float for regression), where} and the task
    {name, pair, regression, metric}. `like`: the training task, which this (evaluation) file must match."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    columns, rows = _rows(path)
    if not rows:
        raise ValueError(f"{path}: no records")
    text, pair = next(((t, p) for t, p in TEXT_COLUMNS if t in columns and (p is None or p in columns)), (None, None))
    label = next((c for c in LABEL_COLUMNS if c in columns), None)
    if text is None or label is None:
        raise ValueError(f"{path}: no {'text' if text is None else 'label'} column (columns: {', '.join(columns)}); "
                         "expected text [, text_pair] and label (or score for regression), or a GLUE TSV")
    name = "cola" if columns == COLA_COLUMNS else GLUE_TASKS.get((text, label), "custom")
    task = {"name": name, "pair": pair is not None, "regression": label == "score",
            "metric": MAIN_METRIC.get(name, "pearson" if label == "score" else "accuracy")}
    if like is not None and (like["pair"], like["regression"]) != (task["pair"], task["regression"]):
        kind = lambda t: ("text pairs" if t["pair"] else "single texts") + (" with scores" if t["regression"] else "")
        raise ValueError(f"{path} holds {kind(task)}, but the run was trained on {kind(like)}")
    records = []
    for row, where in rows:
        for col in (text, pair, label) if pair else (text, label):
            if not isinstance(row, dict) or row.get(col) in (None, ""):
                raise ValueError(f"{where}: missing or empty {col!r}" + (col == pair) * " (a pair task: two texts)")
        if not pair and row.get("text_pair"):
            raise ValueError(f"{where}: a text_pair, but the first record has a single text (mixed tasks)")
        try:
            y = float(row[label]) if task["regression"] else str(row[label])
        except ValueError:
            raise ValueError(f"{where}: score {row[label]!r} is not a number") from None
        records.append({"text": str(row[text]), "pair": str(row[pair]) if pair else None, "label": y, "where": where})
    return records, task


def is_classification_file(path: str) -> bool:
    """Whether --data holds classification data (.csv/.tsv, or .jsonl records with a label or score)."""
    if path.endswith((".csv", ".tsv")):
        return True
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(next(line for line in f if line.strip()))
    except (OSError, ValueError, StopIteration):
        return False  # not ours: the instruction reader gives the error
    return isinstance(first, dict) and ("label" in first or "score" in first)


def label_names(records: list[dict], task: dict) -> list[str]:
    """Class names in id order: sorted (numerically when all are numbers); [] for regression (one output)."""
    if task["regression"]:
        return []
    names = {r["label"] for r in records}
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def subsample(items: list, n: int, seed: int) -> list:
    """At most n items (0 = all): a seeded random choice, kept in file order."""
    if not n or n >= len(items):
        return items
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return [items[i] for i in keep.tolist()]


def encode_classification(records: list[dict], tok, labels: list[str], max_length: int) -> list[dict]:
    """Each record -> {input_ids, token_type_ids, prompt_len (the whole input), label (class id or score), record}.
    Inputs longer than max_length keep their first max_length - 1 tokens and the final separator (counted)."""
    index, out, cut = {name: i for i, name in enumerate(labels)}, [], 0
    for r in records:
        if labels and r["label"] not in index:
            raise ValueError(f"{r['where']}: label {r['label']!r} is not one of the trained labels {labels}")
        ids, types = tok.encode_pair(r["text"], r["pair"])
        if len(ids) > max_length:
            cut, ids, types = cut + 1, ids[:max_length - 1] + ids[-1:], types[:max_length - 1] + types[-1:]
        out.append({"input_ids": ids, "token_type_ids": types, "prompt_len": len(ids), "record": r,
                    "label": index[r["label"]] if labels else r["label"]})
    if cut:
        print(f"warning: {cut} input(s) cut to max_length={max_length}", file=sys.stderr)
    return out


def collate_classification(examples: list[dict], pad_id: int, first: int = 0, last: int = 0,
                           share_weights: bool = False) -> dict:
    """collate's input_ids, attention_mask, prompt_mask (= attention_mask) and positions, right-padded, plus
    token_type_ids [B, T] (0 on padding) and labels [B] (long class ids, or float scores)."""
    batch = collate(examples, pad_id, first, last, share_weights, padding_side="right", with_labels=False)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    for i, e in enumerate(examples):
        batch["token_type_ids"][i, :len(e["token_type_ids"])] = torch.tensor(e["token_type_ids"])
    labels = [e["label"] for e in examples]
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    return batch
