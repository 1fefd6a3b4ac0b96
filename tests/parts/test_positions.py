"""Part `positions` (WALKTHROUGH.md §7): reft.reft_positions(prompt_len, first, last, share_weights, offset), the
"fA+lB" rule of the ReFT paper (§4.1): the first A and the last B prompt tokens, with A <- min(A, floor(n/2)) and
B <- min(B, ceil(n/2)) on short prompts so the two groups never overlap; untied = 2 groups of max(A, B) slots, tied
or a single group = 1 group of A + B slots; -1 fills the empty slots; offset shifts every index.

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake."""
import torch

import reft


def _pos(n, first, last, share=False, offset=0):
    out = reft.reft_positions(n, first, last, share, offset)
    assert torch.is_tensor(out) and out.dtype == torch.long and out.dim() == 2, \
        f"reft_positions must return a LongTensor [groups, slots], got {out!r}"
    return out.tolist()


def _paper(n, first, last, share, offset=0):
    """The rule written out independently: the kept indices of each group in increasing order, then -1s."""
    a, b = min(first, n // 2), min(last, n - n // 2)  # ceil(n/2) = n - floor(n/2)
    head = [offset + i for i in range(a)]
    tail = [offset + i for i in range(n - b, n)]
    if first and last and not share:
        width = max(first, last)
        return [head + [-1] * (width - a), tail + [-1] * (width - b)]
    return [head + tail + [-1] * (first + last - a - b)]


def test_positions_worked_examples():
    cases = [((10, 2, 2, False, 0), [[0, 1], [8, 9]]),
             ((10, 2, 2, True, 0), [[0, 1, 8, 9]]),
             ((5, 2, 2, False, 3), [[3, 4], [6, 7]]),
             ((3, 2, 2, False, 0), [[0, -1], [1, 2]]),
             ((4, 3, 0, False, 0), [[0, 1, -1]])]
    for (n, a, b, share, offset), want in cases:
        got = _pos(n, a, b, share, offset)
        assert got == want, f"n {n}, f{a}+l{b} {'tied' if share else 'untied'}, offset {offset}: expected {want} " \
                            f"(the docstring's worked example), got {got}"


def test_positions_short_prompts_follow_floor_and_ceil():
    for n, first, want in [(4, 3, [[0, 1, -1]]), (5, 3, [[0, 1, -1]]), (1, 2, [[-1, -1]]),
                           (7, 9, [[0, 1, 2] + [-1] * 6])]:
        got = _pos(n, first, 0)
        assert got == want, f"short prompts: at most floor(n/2) first tokens (n {n}, f{first}: A = " \
                            f"{min(first, n // 2)}): expected {want}, got {got}"
    for n, last, want in [(5, 3, [[2, 3, 4]]), (3, 2, [[1, 2]]), (1, 2, [[0, -1]]), (4, 3, [[2, 3, -1]])]:
        got = _pos(n, 0, last)
        assert got == want, f"short prompts: at most ceil(n/2) last tokens (n {n}, l{last}: B = " \
                            f"{min(last, n - n // 2)}): expected {want}, got {got}"
    got = _pos(3, 2, 2)
    assert got == [[0, -1], [1, 2]], \
        f"short prompts: n 3, f2+l2 keeps floor(3/2) = 1 first and ceil(3/2) = 2 last tokens: expected " \
        f"[[0, -1], [1, 2]], got {got}"


def test_positions_groups_never_overlap_and_stay_in_the_prompt():
    for n in range(1, 12):
        for first in range(0, 5):
            for last in range(0, 5):
                if first + last == 0:
                    continue
                for share in (False, True):
                    got = _pos(n, first, last, share, offset=2)
                    kept = [i for g in got for i in g if i != -1]
                    assert all(2 <= i < 2 + n for i in kept), \
                        f"positions must lie inside the prompt [offset, offset + n) = [2, {2 + n}) (n {n}, " \
                        f"f{first}+l{last}), got {got}"
                    assert len(kept) == len(set(kept)), \
                        f"the groups must not overlap: a token is listed twice for n {n}, f{first}+l{last} " \
                        f"{'tied' if share else 'untied'}: {got} (short prompts: A <- min(A, floor(n/2)), " \
                        "B <- min(B, ceil(n/2)))"


def test_positions_empty_slots_are_minus_one():
    got = _pos(2, 3, 3)
    assert got == [[0, -1, -1], [1, -1, -1]], \
        f"empty slots must be -1: n 2, f3+l3 untied keeps one token per side, expected [[0, -1, -1], [1, -1, -1]], " \
        f"got {got}"
    got = _pos(2, 3, 3, share=True)
    assert got == [[0, 1, -1, -1, -1, -1]], \
        f"empty slots must be -1: n 2, f3+l3 tied: expected [[0, 1, -1, -1, -1, -1]], got {got}"
    got = _pos(10, 1, 3)
    assert got == [[0, -1, -1], [7, 8, 9]], \
        f"empty slots must be -1: untied f1+l3 pads the first-token group to max(A, B) = 3 slots, expected " \
        f"[[0, -1, -1], [7, 8, 9]], got {got}"


def test_positions_groups_and_slots():
    for first, last, share, shape in [(2, 3, False, (2, 3)), (3, 1, False, (2, 3)), (2, 3, True, (1, 5)),
                                      (4, 0, False, (1, 4)), (0, 2, False, (1, 2)), (0, 2, True, (1, 2))]:
        out = reft.reft_positions(20, first, last, share, 0)
        assert tuple(out.shape) == shape, \
            (f"untied positions need one group per side: f{first}+l{last} untied must be [2, max(A, B)] = {shape}, "
             if first and last and not share else
             f"tied or one-sided positions are one group of A + B slots: f{first}+l{last} "
             f"{'tied' if share else 'untied'} must be {shape}, ") + f"got {tuple(out.shape)}"
    got = _pos(20, 2, 3)
    assert got == [[0, 1, -1], [17, 18, 19]], \
        f"untied positions need one group per side, [first-A group, last-B group]: expected " \
        f"[[0, 1, -1], [17, 18, 19]], got {got}"
    got = _pos(20, 2, 3, share=True)
    assert got == [[0, 1, 17, 18, 19]], f"tied f2+l3: one group, the first 2 then the last 3 tokens: expected " \
                                        f"[[0, 1, 17, 18, 19]], got {got}"


def test_positions_offset_shifts_every_index():
    got = _pos(6, 2, 2, offset=4)
    assert got == [[4, 5], [8, 9]], f"offset shifts every index (left padding puts the prompt at offset): n 6, " \
                                    f"f2+l2, offset 4: expected [[4, 5], [8, 9]], got {got}"
    got = _pos(3, 2, 2, offset=5)
    assert got == [[5, -1], [6, 7]], f"offset shifts every kept index, and empty slots stay -1: n 3, f2+l2, " \
                                     f"offset 5: expected [[5, -1], [6, 7]], got {got}"
    got = _pos(5, 0, 2, share=True, offset=1)
    assert got == [[4, 5]], f"offset shifts every index: n 5, l2, offset 1: expected [[4, 5]], got {got}"


def test_positions_follow_the_paper_rule_everywhere():
    for n in range(1, 10):
        for first in range(0, 4):
            for last in range(0, 4):
                if first + last == 0:
                    continue
                for share in (False, True):
                    for offset in (0, 3):
                        got, want = _pos(n, first, last, share, offset), _paper(n, first, last, share, offset)
                        assert got == want, \
                            f"n {n}, f{first}+l{last} {'tied' if share else 'untied'}, offset {offset}: expected " \
                            f"{want}, got {got} (each group: its kept indices in increasing order, then -1s)"
    scheme = reft.PositionScheme(2, 2, False)
    assert scheme.of(3, offset=1).tolist() == [[1, -1], [2, 3]], "PositionScheme.of must use the same rule"
