"""Writes the quick-start dataset: examples/steer_train.jsonl and examples/steer_eval.jsonl.

The task, written for llama2.c's 260K-parameter TinyStories model: after a one-sentence prompt "Lily had a red ball.",
answer with the fixed sentence 'Lily said, "I love my red ball!"'. The frozen model wanders off into a story; the
trained intervention must steer it into the new sentence frame while copying the name, colour and thing from the
prompt. The held-out file uses combinations never seen in training, so exact match measures copying, not recall.
"""
import itertools
import json
import os
import random

NAMES = ["Lily", "Tom", "Ben", "Sue", "Anna", "Max", "Mia", "Sam", "Tim", "Lucy", "Jack", "Amy"]
COLORS = ["red", "blue", "green", "yellow", "big", "little", "pink", "shiny"]
THINGS = ["ball", "car", "doll", "kite", "hat", "book", "box", "cake", "toy", "dog", "cat", "bird"]


def main(n_train: int = 300, n_eval: int = 50, seed: int = 0):
    combos = list(itertools.product(NAMES, COLORS, THINGS))
    random.Random(seed).shuffle(combos)
    here = os.path.dirname(os.path.abspath(__file__))
    for name, part in (("steer_train.jsonl", combos[:n_train]), ("steer_eval.jsonl", combos[n_train:n_train + n_eval])):
        with open(os.path.join(here, name), "w") as f:
            for who, color, thing in part:
                rec = {"prompt": f"{who} had a {color} {thing}.", "response": f'{who} said, "I love my {color} {thing}!"'}
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
