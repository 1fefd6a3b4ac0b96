"""Part `positions` (WALKTHROUGH.md §7): reft.reft_positions(prompt_len, first, last, share_weights, offset), the
"fA+lB" rule of the ReFT paper (§4.1): the first A and the last B prompt tokens, with A <- min(A, floor(n/2)) and
B <- min(B, ceil(n/2)) on short prompts so the two groups never overlap; untied = 2 groups of max(A, B) slots, tied
or a single group = 1 group of A + B slots; -1 fills the empty slots; offset shifts every index.

Each case draws prompt lengths and fA+lB settings from a seed, calls the student's reft_positions and returns what it
gave, one output per call, named after the call (so a failure names the call to try); the grader compares them with
the reference's (teach/expected/positions.pt). No case holds the solution."""
import torch

from grading import Case, generator


def _draw(g, lo, hi):
    """An int in [lo, hi) from the generator g."""
    return int(torch.randint(lo, hi, (), generator=g))


def _calls(configs):
    """{"reft_positions(n, A, B, share, offset=o)": its output} for each (n, A, B, share, offset)."""
    import reft
    return {f"reft_positions({n}, {a}, {b}, {share}, offset={o})": reft.reft_positions(n, a, b, share, o)
            for n, a, b, share, o in configs}


def run_worked_examples(seed):
    g = generator(seed, 1)
    n, a, b = _draw(g, 9, 16), _draw(g, 1, 4), _draw(g, 1, 4)
    return _calls([(n, a, b, False, 0),  # a long prompt, untied: [[first a], [last b]]
                   (n, a, b, True, 0),  # tied: one group
                   (_draw(g, 4, 9), 2, 2, False, _draw(g, 1, 6)),  # left padding: the prompt starts at offset
                   (3, 2, 2, False, 0),  # a short prompt: A = min(2, 1), B = min(2, 2)
                   (_draw(g, 4, 6), 3, 0, False, 0)])  # fA alone on a short prompt


def run_short_prompts(seed):
    g = generator(seed, 2)
    configs = []
    for _ in range(3):  # first tokens only, more than half the prompt asked for
        n = _draw(g, 1, 9)
        configs.append((n, _draw(g, n // 2 + 1, n + 3), 0, False, 0))
    for _ in range(3):  # last tokens only, odd prompts, at least ceil(n/2) asked for
        n = 2 * _draw(g, 0, 5) + 1
        configs.append((n, 0, _draw(g, (n + 1) // 2, n + 3), bool(_draw(g, 0, 2)), 0))
    for _ in range(2):  # both, odd short prompts
        n = 2 * _draw(g, 1, 4) + 1
        configs.append((n, _draw(g, n // 2 + 1, n + 2), _draw(g, (n + 1) // 2, n + 2), False, 0))
    configs += [(1, 2, 0, False, 0), (1, 0, 2, False, 0)]  # a 1-token prompt keeps no first, one last token
    return _calls(configs)


def run_groups_never_overlap(seed):
    g = generator(seed, 3)
    configs = []
    for n in range(1, 12):
        a, b = _draw(g, 0, 5), _draw(g, 0, 5)
        configs.append((n, a, b if a + b else 1, bool(_draw(g, 0, 2)), _draw(g, 0, 4)))
    return _calls(configs)


def run_empty_slots(seed):
    g = generator(seed, 4)
    n = _draw(g, 1, 4)
    a, b = _draw(g, n, n + 3), _draw(g, n, n + 3)
    long_n = _draw(g, 10, 20)
    a1 = _draw(g, 1, 3)
    b1 = _draw(g, a1 + 1, 6)
    a2 = _draw(g, 3, 6)
    b2 = _draw(g, 1, a2)
    return _calls([(n, a, b, False, 0), (n, a, b, True, 0),  # short: slots freed by the short-prompt rule
                   (long_n, a1, b1, False, 0), (long_n, a2, b2, False, 0)])  # untied A != B: the shorter group pads


def run_groups_and_slots(seed):
    g = generator(seed, 5)
    n, a, b = _draw(g, 16, 24), _draw(g, 1, 5), _draw(g, 1, 5)
    b += a == b
    return _calls([(n, a, b, False, 0), (n, b, a, False, 0), (n, a, b, True, 0), (n, a, 0, False, 0),
                   (n, 0, b, False, 0), (n, 0, b, True, 0)])


def run_offset(seed):
    g = generator(seed, 6)
    n, o = _draw(g, 5, 12), _draw(g, 1, 8)
    a, b = _draw(g, 1, 4), _draw(g, 1, 4)
    return _calls([(n, 2, 2, False, o), (n, a, b, True, o), (3, 2, 2, False, _draw(g, 1, 8)),
                   (_draw(g, 3, 8), 0, 2, True, _draw(g, 1, 8))])


def run_paper_rule_everywhere(seed):
    import reft
    g = generator(seed, 7)
    configs = []
    for _ in range(20):
        a, b = _draw(g, 0, 5), _draw(g, 0, 5)
        configs.append((_draw(g, 1, 13), a, b if a + b else _draw(g, 1, 5), bool(_draw(g, 0, 2)), _draw(g, 0, 6)))
    out = _calls(configs)
    for _ in range(2):  # data.collate's entry point: the same rule
        a, b, share, n, o = _draw(g, 1, 4), _draw(g, 1, 4), bool(_draw(g, 0, 2)), _draw(g, 1, 8), _draw(g, 0, 4)
        out[f"PositionScheme({a}, {b}, {share}).of({n}, offset={o})"] = reft.PositionScheme(a, b, share).of(n, o)
    return out


CASES = [
    Case("worked_examples", run_worked_examples,
         "reft_positions on the docstring's kinds of example (long prompts tied and untied, an offset, short prompts)"),
    Case("short_prompts_follow_floor_and_ceil", run_short_prompts,
         "reft_positions on short prompts (at most floor(n/2) first and ceil(n/2) last tokens)"),
    Case("groups_never_overlap_and_stay_in_the_prompt", run_groups_never_overlap,
         "reft_positions for prompts of 1 to 11 tokens (kept indices lie in [offset, offset + n), none twice)"),
    Case("empty_slots_are_minus_one", run_empty_slots,
         "reft_positions where some slots stay empty (short prompts, untied groups with A != B)"),
    Case("groups_and_slots", run_groups_and_slots,
         "reft_positions' groups and slots (untied fA+lB: 2 groups of max(A, B) slots; tied or one-sided: 1 group "
         "of A + B slots)"),
    Case("offset_shifts_every_index", run_offset, "reft_positions with an offset (left padding)"),
    Case("follow_the_paper_rule_everywhere", run_paper_rule_everywhere,
         "reft_positions and PositionScheme.of on random prompt lengths, fA+lB, tying and offsets"),
]
