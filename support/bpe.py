"""Pieces shared by the byte-level BPE tokenizers (support/tokenizer.py's GPT-2/RoBERTa reader and
support/hf_tokenizer.py's tokenizer.json reader): GPT-2's byte table, Unicode whitespace, and the merge loop."""
import math


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character table. BPE works on strings, and a vocab.json full of raw
    spaces and control bytes would be unreadable, so the 188 printable bytes stand for themselves and the
    other 68 (space, control, ...) are shifted to the unused characters 256..323 (space becomes 'Ġ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


# The Unicode White_Space property, which is what \s means in GPT-2's regex (Python's str.isspace differs).
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}


def bpe_merge(parts: list[str], ranks: dict) -> list[str]:
    """Repeatedly merge the adjacent pair with the lowest rank (everywhere it occurs) until no pair of neighbours is
    a known merge. ranks: (left, right) -> priority, the lower the earlier learned."""
    while len(parts) > 1:
        pair = min(zip(parts, parts[1:]), key=lambda p: ranks.get(p, math.inf))
        if pair not in ranks:
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
    return parts
