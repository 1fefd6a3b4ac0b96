"""Writes the classification quick-start dataset: examples/sentiment_train.jsonl and examples/sentiment_dev.jsonl.

Short review sentences labelled "positive" or "negative", built from templates. Some need more than a word list:
"The movie was not great." is negative, and in "The film looked boring, but it was wonderful." the second clause
decides. The dev file shares no noun and no adjective with the training file (it reviews a "novel" that is
"splendid", "tedious", ...), so held-out accuracy measures what the intervention makes of the encoder's own word
knowledge, not recall of training words.
"""
import json
import os
import random

THINGS = {"train": ["movie", "film", "meal", "hotel", "book", "album", "show", "service", "phone", "game", "concert",
                    "pizza"],
          "dev": ["play", "restaurant", "novel", "laptop", "soup", "museum", "song", "camera"]}
POSITIVE = {"train": ["great", "wonderful", "excellent", "delightful", "amazing", "fantastic", "lovely", "superb",
                      "charming", "brilliant"],
            "dev": ["terrific", "marvelous", "enjoyable", "outstanding", "pleasant", "splendid"]}
NEGATIVE = {"train": ["terrible", "awful", "boring", "dreadful", "disappointing", "horrible", "dull", "bad", "poor",
                      "annoying"],
            "dev": ["mediocre", "tedious", "miserable", "unpleasant", "lousy", "pathetic"]}
PLAIN = ["The {t} was {a}.", "I found the {t} {a}.", "What a {a} {t}!", "Honestly, the {t} felt {a}.",
         "Our {t} turned out {a} in the end.", "Everyone agreed that the {t} was {a}."]
NEGATED = ["The {t} was not {a}.", "I would not call the {t} {a}.", "Sadly, the {t} was far from {a}."]  # a: positive
CONTRAST = "The {t} looked {b}, but it was {a}."  # the label follows a (the second clause)


def sentences(split: str) -> list[tuple[str, str]]:
    """Every (sentence, label) the templates give with this split's words."""
    out = []
    for t in THINGS[split]:
        for label, adjs, others in (("positive", POSITIVE[split], NEGATIVE[split]),
                                    ("negative", NEGATIVE[split], POSITIVE[split])):
            for i, a in enumerate(adjs):
                out += [(p.format(t=t, a=a), label) for p in PLAIN]
                out += [(CONTRAST.format(t=t, a=a, b=others[(i + k) % len(others)]), label) for k in (0, 1)]
        out += [(p.format(t=t, a=a), "negative") for p in NEGATED for a in POSITIVE[split]]
    return out


def main(n_train: int = 400, n_dev: int = 200, seed: int = 0):
    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        pool = sentences(split)
        rng.shuffle(pool)
        # balanced: n/2 of each label, in a shuffled order
        chosen = [s for s in pool if s[1] == "positive"][:n // 2] + [s for s in pool if s[1] == "negative"][:n // 2]
        rng.shuffle(chosen)
        with open(os.path.join(here, f"sentiment_{split}.jsonl"), "w") as f:
            for text, label in chosen:
                f.write(json.dumps({"text": text, "label": label}) + "\n")


if __name__ == "__main__":
    main()
