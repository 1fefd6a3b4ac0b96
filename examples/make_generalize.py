"""Writes the generalization task: examples/generalize_train.jsonl (80 records) and examples/generalize_eval.jsonl (60).

The quick start's sentence frame, made harder to pass by memorising: after a one-sentence prompt, answer
'<name> said, "I love my <colour> <thing>!"' with the prompt's name, colour and thing. Training uses two phrasings
("Kate had a red ball.", "Kate got a red ball.", 40 records each) and forty names, each once per phrasing, so that
copying the name pays more than recalling one. The held-out prompts use a third phrasing ("Lily found a red ball.")
and ten other names, none of them in any training record: the names TinyStories uses most, which the frozen model
knows well, while the training names are rarer ones. With the 512-token vocabulary of stories260K most names are 2-5
tokens, so a held-out hit means carrying an unseen token sequence over, not recalling one. A hit
(benchmarks/generalize.py) is a greedy continuation that contains the expected sentence exactly.
"""
import json
import os
import random

TRAIN_NAMES = ["Jack", "Amy", "Sara", "Mary", "John", "Sally", "Molly", "Timmy", "Billy", "Jake", "Emma", "Ella", "Mike",
               "Lisa", "Bella", "Daisy", "Leo", "Jim", "Kitty", "Sophie", "Jenny", "Peter", "Paul", "Mark", "Luke", "Ruby",
               "Grace", "Alice", "Henry", "Lola", "Kate", "Bob", "Joe", "Zoe", "Dan", "Jill", "Ted", "Meg", "Pam",
               "Rose"]  # each in one record of each training phrasing
EVAL_NAMES = ["Lily", "Tom", "Ben", "Sue", "Anna", "Max", "Mia", "Sam", "Tim", "Lucy"]  # TinyStories' own favourites
COLORS = ["red", "blue", "green", "yellow", "big", "little", "pink", "shiny"]
THINGS = ["ball", "car", "doll", "kite", "hat", "book", "box", "cake", "toy", "dog", "cat", "bird"]
TRAIN_PHRASINGS = ["{who} had a {color} {thing}.", "{who} got a {color} {thing}."]
EVAL_PHRASING = "{who} found a {color} {thing}."


def record(phrasing: str, who: str, color: str, thing: str) -> dict:
    return {"prompt": phrasing.format(who=who, color=color, thing=thing),
            "response": f'{who} said, "I love my {color} {thing}!"'}


def main(n_per_phrasing: int = 40, n_eval: int = 60, seed: int = 0):
    rng = random.Random(seed)
    train = [record(p, TRAIN_NAMES[i % len(TRAIN_NAMES)], rng.choice(COLORS), rng.choice(THINGS))
             for p in TRAIN_PHRASINGS for i in range(n_per_phrasing)]
    rng.shuffle(train)  # the two phrasings interleaved
    evals = [record(EVAL_PHRASING, EVAL_NAMES[i % len(EVAL_NAMES)], rng.choice(COLORS), rng.choice(THINGS))
             for i in range(n_eval)]  # every held-out name n_eval / 10 times
    assert not {r["prompt"].split()[0] for r in train} & set(EVAL_NAMES)
    here = os.path.dirname(os.path.abspath(__file__))
    for name, part in (("generalize_train.jsonl", train), ("generalize_eval.jsonl", evals)):
        with open(os.path.join(here, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)


if __name__ == "__main__":
    main()
