"""Full-sentence SST-2 splits from GLUE's SST-2 rows (../shared/assets/sst2, or $REFT_SHARED_ASSETS/sst2).

GLUE's SST-2 train split holds every labelled phrase of each movie-review sentence's parse tree (67,349 rows for about
6,900 sentences): most rows are short phrases ("well-conceived", "author 's"), and the phrases of one sentence are
spread over the rows, so a dev set of random rows shares most of its text with the training rows. Accuracy measured
on such rows overstates accuracy on new, whole sentences. This script writes, into OUT (default runs/sst2):

  dev_sentences.tsv  N held-out whole sentences: rows of at least MIN_WORDS words that occur inside no longer row
  dev_phrases.tsv    up to M phrases of those held-out sentences (rows found inside them; the sentences excluded)
  train.tsv          every other row, after removing each row that occurs inside a held-out sentence (GLUE's
                     phrases come from the same sentences, so they would leak the dev labels)
  train_sentences.tsv  the whole sentences of train.tsv alone

Columns as GLUE writes them (sentence<TAB>label, no quoting), so `train.py --data OUT/train.tsv` reads them as SST-2.
  python examples/make_sst2.py [--out runs/sst2] [--dev 1000] [--phrases 2000] [--seed 0]
"""
import argparse
import csv
import os
import random
from collections import defaultdict

MIN_WORDS = 8  # a whole sentence: at least this many words, and inside no longer row


def read_rows(folder: str) -> list[tuple[str, str]]:
    rows, seen = [], set()
    for name in ("train.tsv", "dev.tsv"):  # together GLUE SST-2's train split
        with open(os.path.join(folder, name), encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(reader)  # header: sentence, label
            for text, label in reader:
                text = " ".join(text.split())
                if text and text not in seen:  # a few rows repeat
                    seen.add(text)
                    rows.append((text, label))
    return rows


def whole_sentences(rows: list[tuple[str, str]]) -> set[str]:
    """Rows of at least MIN_WORDS words that occur (at word boundaries) inside no longer row."""
    long = sorted((t for t, _ in rows if len(t.split()) >= MIN_WORDS), key=len, reverse=True)
    by_trigram = defaultdict(set)  # a row inside another shares its first three words with it
    for i, t in enumerate(long):
        w = t.split()
        for j in range(len(w) - 2):
            by_trigram[tuple(w[j:j + 3])].add(i)
    out = set()
    for i, t in enumerate(long):
        inside = (f" {long[k]} " for k in by_trigram[tuple(t.split()[:3])] if len(long[k]) > len(t))
        if not any(f" {t} " in other for other in inside):
            out.add(t)
    return out


def spans(sentence: str) -> set[str]:
    """Every contiguous run of words of a sentence (the strings a phrase of it can be)."""
    w = sentence.split()
    return {" ".join(w[i:j]) for i in range(len(w)) for j in range(i + 1, len(w) + 1)}


def write(path: str, rows: list[tuple[str, str]]):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assets = os.environ.get("REFT_SHARED_ASSETS", os.path.join(os.path.dirname(here), "shared", "assets"))
    p.add_argument("--assets", default=os.path.join(assets, "sst2"), help="folder with GLUE's train.tsv and dev.tsv")
    p.add_argument("--out", default="runs/sst2")
    p.add_argument("--dev", type=int, default=1000, help="held-out whole sentences")
    p.add_argument("--phrases", type=int, default=2000, help="at most this many phrases of them")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not all(os.path.isfile(os.path.join(args.assets, n)) for n in ("train.tsv", "dev.tsv")):
        raise SystemExit(f"error: {args.assets} has no GLUE SST-2 train.tsv and dev.tsv: download "
                         "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip, unzip it, and pass --assets SST-2")
    rows = read_rows(args.assets)
    sentences = whole_sentences(rows)
    rng = random.Random(args.seed)
    dev = rng.sample(sorted(sentences), args.dev)
    inside_dev = set().union(*(spans(s) for s in dev))  # every row found here comes from a held-out sentence
    label = dict(rows)
    train = [(t, l) for t, l in rows if t not in inside_dev]
    phrases = sorted(t for t, _ in rows if t in inside_dev and t not in set(dev))
    phrases = rng.sample(phrases, min(args.phrases, len(phrases)))
    os.makedirs(args.out, exist_ok=True)
    write(os.path.join(args.out, "dev_sentences.tsv"), [(t, label[t]) for t in dev])
    write(os.path.join(args.out, "dev_phrases.tsv"), [(t, label[t]) for t in phrases])
    write(os.path.join(args.out, "train.tsv"), train)
    write(os.path.join(args.out, "train_sentences.tsv"), [(t, l) for t, l in train if t in sentences])
    words = lambda ts: sum(len(t.split()) for t in ts) / max(len(ts), 1)
    print(f"{len(rows):,} distinct rows, {len(sentences):,} whole sentences (>= {MIN_WORDS} words, inside no other row)")
    print(f"dev_sentences: {len(dev):,} (mean {words(dev):.1f} words, {sum(label[t] == '1' for t in dev) / len(dev):.1%} "
          f"positive); dev_phrases: {len(phrases):,} (mean {words(phrases):.1f} words)")
    print(f"train: {len(train):,} rows ({len(rows) - len(train):,} removed: inside a dev sentence), of which "
          f"{sum(t in sentences for t, _ in train):,} whole sentences; written to {args.out}/")


if __name__ == "__main__":
    main()
