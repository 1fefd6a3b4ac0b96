"""Writes the language-model tasks of the generalization suite (benchmarks/suite.py) for the shipped stories260K
model: examples/tasks/<task>_train.jsonl and <task>_eval.jsonl, one {"prompt", "response"} record per line.

Each task tests one kind of generalization; its held-out file holds only prompts whose combination of words (and, for
some tasks, whose phrasing, names or things) never occurs in training. A hit (benchmarks/suite.py) is a greedy
continuation that contains the record's response exactly: the frame, with the prompt's own name and thing.

  frame     (a) a new answer frame: "Kate had a red ball." -> '"Look at my ball!" said Kate.'; held out:
            colour-thing pairs absent from training (every word seen in training)
  phrasing  (b) a held-out phrasing: training prompts "had / got / saw a ...", held-out "found / made a ...", the
            same names, colours and things -> 'Kate smiled and said, "I like this ball!"'
  unseen    (c) unseen names or things: held-out prompts name people (a third), things (a third) or both (a third)
            that no training record holds -> "Kate gave the ball to Mom."
  long      (d) a longer response, two sentences: "Kate played with the ball. Then Kate went home happy."; held out:
            unseen colour-thing pairs
  cue       (e) two frames chosen by a cue word: "found" -> 'Kate said, "I found my ball!"', "lost" ->
            'Kate cried, "Where is my ball?"'; held out: unseen colour-thing pairs, half of each cue

The responses leave the colour out: in trials stories260K mostly dropped it (12 % hits on the held-out pairs of a
'"My ball is red," said Kate.' frame after 20 epochs), which left no room to tell recipes apart.

With the 512-token vocabulary of stories260K most names are 2-5 tokens, so copying a name means carrying a token
sequence over. Deterministic (--seed, default 0); 72 training and 48 held-out records per task by default.

  python examples/make_tasks.py [--out examples/tasks] [--seed 0] [--train 72] [--eval 48]
"""
import argparse
import itertools
import json
import os
import random

NAMES = ["Jack", "Amy", "Sara", "Mary", "John", "Sally", "Molly", "Timmy", "Billy", "Jake", "Emma", "Mike", "Bella",
         "Daisy", "Leo", "Jim", "Sophie", "Jenny", "Peter", "Kate", "Bob", "Joe", "Zoe", "Dan"]
UNSEEN_NAMES = ["Lily", "Tom", "Ben", "Sue", "Anna", "Max", "Mia", "Sam"]  # TinyStories' favourites, never trained on
COLORS = ["red", "blue", "green", "yellow", "pink", "big", "little", "shiny"]
THINGS = ["ball", "car", "doll", "kite", "hat", "book", "box", "cake", "toy", "cup"]
UNSEEN_THINGS = ["bird", "dog", "cat", "tree", "boat", "fish"]


def rec(prompt: str, response: str, **slots) -> dict:
    return {"prompt": prompt.format(**slots), "response": response.format(**slots)}


def split_combos(rng: random.Random, names, colors, things, n_train: int, n_eval: int):
    """n_train and n_eval (name, colour, thing) triples whose (colour, thing) pairs do not overlap: no held-out
    prompt's colour-thing pair was trained on, though each word was."""
    pairs = list(itertools.product(colors, things))
    rng.shuffle(pairs)
    held = pairs[:len(pairs) // 3]  # a third of the colour-thing pairs only held out
    trained = pairs[len(pairs) // 3:]
    train = [(names[i % len(names)],) + trained[i % len(trained)] for i in range(n_train)]
    evals = [(rng.choice(names),) + held[i % len(held)] for i in range(n_eval)]
    rng.shuffle(train)
    return train, evals


def frame(rng, n_train, n_eval):
    p, r = "{who} had a {color} {thing}.", '"Look at my {thing}!" said {who}.'
    tr, ev = split_combos(rng, NAMES, COLORS, THINGS, n_train, n_eval)
    mk = lambda combos: [rec(p, r, who=w, color=c, thing=t) for w, c, t in combos]
    return mk(tr), mk(ev)


def phrasing(rng, n_train, n_eval):
    train_p = ["{who} had a {color} {thing}.", "{who} got a {color} {thing}.", "{who} saw a {color} {thing}."]
    eval_p = ["{who} found a {color} {thing}.", "{who} made a {color} {thing}."]
    r = "{who} smiled and said, \"I like this {thing}!\""
    train = [rec(train_p[i % 3], r, who=NAMES[i % len(NAMES)], color=rng.choice(COLORS), thing=rng.choice(THINGS))
             for i in range(n_train)]
    evals = [rec(eval_p[i % 2], r, who=rng.choice(NAMES), color=rng.choice(COLORS), thing=rng.choice(THINGS))
             for i in range(n_eval)]
    rng.shuffle(train)
    return train, evals


def unseen(rng, n_train, n_eval):
    p, r = "{who} had a {color} {thing}.", "{who} gave the {thing} to Mom."
    train = [rec(p, r, who=NAMES[i % len(NAMES)], color=rng.choice(COLORS), thing=rng.choice(THINGS))
             for i in range(n_train)]
    evals = []
    for i in range(n_eval):  # unseen name, unseen thing, both: a third each
        new_name, new_thing = i % 3 in (0, 2), i % 3 in (1, 2)
        evals.append(rec(p, r, who=rng.choice(UNSEEN_NAMES if new_name else NAMES), color=rng.choice(COLORS),
                         thing=rng.choice(UNSEEN_THINGS if new_thing else THINGS)))
    rng.shuffle(train)
    return train, evals


def long(rng, n_train, n_eval):
    p, r = "{who} had a {color} {thing}.", "{who} played with the {thing}. Then {who} went home happy."
    tr, ev = split_combos(rng, NAMES, COLORS, THINGS, n_train, n_eval)
    mk = lambda combos: [rec(p, r, who=w, color=c, thing=t) for w, c, t in combos]
    return mk(tr), mk(ev)


def cue(rng, n_train, n_eval):
    frames = {"found": '{who} said, "I found my {thing}!"', "lost": '{who} cried, "Where is my {thing}?"'}
    tr, ev = split_combos(rng, NAMES, COLORS, THINGS, n_train, n_eval)
    mk = lambda combos: [rec("{who} %s a {color} {thing}." % verb, frames[verb], who=w, color=c, thing=t)
                         for i, (w, c, t) in enumerate(combos) for verb in [("found", "lost")[i % 2]]]
    return mk(tr), mk(ev)


MAKERS = {"frame": frame, "phrasing": phrasing, "unseen": unseen, "long": long, "cue": cue}


def make(out: str, seed: int = 0, n_train: int = 72, n_eval: int = 48) -> dict:
    """Writes every task into `out`; -> {task: (train path, eval path)}."""
    os.makedirs(out, exist_ok=True)
    paths = {}
    for i, (name, maker) in enumerate(MAKERS.items()):
        train, evals = maker(random.Random(seed * 100 + i), n_train, n_eval)
        trained = {r["prompt"] for r in train}
        assert not any(r["prompt"] in trained for r in evals), name  # held out means never trained on
        paths[name] = (os.path.join(out, f"{name}_train.jsonl"), os.path.join(out, f"{name}_eval.jsonl"))
        for path, part in zip(paths[name], (train, evals)):
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in part)
    return paths


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(here, "tasks"), help="folder for <task>_train.jsonl / _eval.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=72, help="training records per task")
    p.add_argument("--eval", type=int, default=48, help="held-out records per task")
    args = p.parse_args(argv)
    paths = make(args.out, args.seed, args.train, args.eval)
    print(f"wrote {len(paths)} tasks ({', '.join(paths)}) to {args.out}/: {args.train} training and {args.eval} "
          "held-out records each")


if __name__ == "__main__":
    main()
