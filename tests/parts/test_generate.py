"""Part `generate` (WALKTHROUGH.md §5): model.generate after its context check.

  prefill    one forward over the (left-padded) prompt, filling a KVCache
  decode     one forward per further new token, feeding only that token [B, 1] and reusing the cache, the attention
             mask grown by one column per step; the method goes along, its positions (prompt edits) do not
  no cache   use_cache=False recomputes the whole sequence every step (same prompt edits): the oracle
  eos        rows that produced eos_id are filled with eos_id; the loop stops when every row has, or after
             max_new_tokens

Each test runs a tiny random Llama and compares with greedy decoding written out here (full recomputation with the
model's forward). Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the
mistake."""
import torch

import model as M
import reft

VOCAB = 64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _llama(seed=0):
    cfg = M.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    model = M.Llama(cfg)
    g = _gen(seed)
    with torch.no_grad():  # weights far from the default init, so that greedy tokens vary from step to step
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 if p.ndim > 1 else 1 + 0.2 * torch.rand(p.shape,
                                                                                                  generator=g))
    return model.eval()


def _prompts(B, T, seed):
    return torch.randint(3, VOCAB, (B, T), generator=_gen(seed))


@torch.no_grad()
def _greedy(model, ids, n, mask=None):
    """Greedy decoding by full recomputation: argmax of the last logits of the whole sequence, n times."""
    out = []
    for _ in range(n):
        nxt = model(ids, mask)[:, -1].argmax(-1)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = None if mask is None else torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    return torch.stack(out, 1)


class _Recorder:
    """Replaces model.forward: records (input shape, cache object, cache.length before the call, positions given)
    in calls and the attention mask's shape in masks, and runs check(self) before each call, so that a wrong call
    fails with a message before it can crash the model."""

    def __init__(self, model, check=None):
        self.calls, self.masks, self.forward, self.check = [], [], model.forward, check
        model.forward = self

    def __call__(self, input_ids, attention_mask=None, cache=None, method=None, positions=None, prompt_mask=None):
        self.calls.append((tuple(input_ids.shape), cache, None if cache is None else cache.length, positions))
        self.masks.append(None if attention_mask is None else tuple(attention_mask.shape))
        if self.check is not None:
            self.check(self)
        return self.forward(input_ids, attention_mask, cache, method, positions, prompt_mask)


def test_generate_greedy_equals_recomputation():
    model, ids = _llama(1), _prompts(3, 5, seed=2)
    want = _greedy(model, ids, 8)
    assert len({tuple(r) for r in want.tolist()}) > 1 and len(set(want[0].tolist())) > 2  # a non-trivial case
    got = M.generate(model, ids, max_new_tokens=8)
    assert got.shape == (3, 8), f"generate must return the new tokens only, [B, max_new_tokens] = (3, 8), " \
                                f"got {tuple(got.shape)}"
    assert got.tolist() == want.tolist(), \
        "greedy generate (temperature 0) must equal argmax decoding with the whole sequence recomputed each step: " \
        f"got {got.tolist()}, expected {want.tolist()}"


def test_generate_decode_feeds_one_token_and_reuses_the_cache():
    model, ids, n = _llama(3), _prompts(2, 4, seed=4), 6

    def check(rec):
        calls = rec.calls
        shape, cache, length, _ = calls[0]
        assert shape == (2, 4) and cache is not None and length == 0, \
            "the first call must be the prefill: the whole prompt [B, T] = (2, 4) into an empty KVCache, got input " \
            f"{shape} with {'no cache' if cache is None else f'a cache of length {length}'}"
        i = len(calls) - 1
        if i:
            shape, c, length, _ = calls[-1]
            assert shape == (2, 1) and c is cache and length == 4 + i - 1, \
                f"decode must feed one token per step and reuse the KV cache: call {i} got input {shape} and " \
                f"{'the prefill cache' if c is cache else 'another cache or none'}" \
                f"{'' if c is None else f' of length {length} (expected {4 + i - 1})'}"
        assert i <= n, f"{n} new tokens need one prefill and {n - 1} one-token decode calls, got a call {i + 1}"

    rec = _Recorder(model, check)
    got = M.generate(model, ids, max_new_tokens=n)
    del model.forward  # the class's forward again
    assert len(rec.calls) >= n, f"{n} new tokens need one prefill and {n - 1} decode calls, got {len(rec.calls)}"
    cache = rec.calls[0][1]
    assert cache.max_len >= 4 + n, f"the cache must hold the prompt and the {n} new tokens: max_len {cache.max_len}"
    assert got.tolist() == _greedy(model, ids, n).tolist(), "cached generate must equal recomputation"


def test_generate_without_cache_recomputes_the_whole_sequence():
    model, ids, n = _llama(5), _prompts(2, 3, seed=6), 5
    rec = _Recorder(model)
    got = M.generate(model, ids, max_new_tokens=n, use_cache=False)
    del model.forward
    lengths = [shape[1] for shape, _, _, _ in rec.calls]
    assert all(c is None for _, c, _, _ in rec.calls), "use_cache=False must call the model without a cache"
    assert lengths[:n] == list(range(3, 3 + n)), \
        f"use_cache=False must recompute the whole sequence, one token longer each step: input lengths {lengths}, " \
        f"expected {list(range(3, 3 + n))}"
    assert got.tolist() == _greedy(model, ids, n).tolist(), \
        "use_cache=False must feed the prompt and every generated token so far (greedy: argmax of the last logits)"
    assert got.tolist() == M.generate(model, ids, max_new_tokens=n, use_cache=True).tolist(), \
        "cached and uncached generation must return the same tokens"


def test_generate_left_padded_rows_equal_each_row_alone():
    model = _llama(7)
    rows = [_prompts(1, T, seed=8 + T)[0].tolist() for T in (5, 2, 4)]
    ids = torch.tensor([[0] * (5 - len(r)) + r for r in rows])  # left padding with id 0
    mask = torch.tensor([[0] * (5 - len(r)) + [1] * len(r) for r in rows])
    alone = [_greedy(model, torch.tensor([r]), 6)[0].tolist() for r in rows]
    assert _greedy(model, ids, 6, mask).tolist() == alone  # the forward itself handles padding
    def check(rec):
        i, got = len(rec.masks) - 1, rec.masks[-1]
        assert got == (3, 5 + i), \
            f"call {i} of generate (use_cache={use_cache}) passed an attention mask of shape {got}, expected " \
            f"{(3, 5 + i)}: the mask must cover the prompt and every new token so far (grow it by one column of " \
            "ones per new token, also with the cache: it counts past and current tokens)"

    for use_cache in (True, False):
        _Recorder(model, check)
        try:
            got = M.generate(model, ids, mask, max_new_tokens=6, use_cache=use_cache)
        except ValueError as e:  # the model's own checks refused a call
            raise AssertionError(f"with use_cache={use_cache}, generate made a call the model refused: {e}") from e
        del model.forward
        assert got.tolist() == alone, \
            f"with use_cache={use_cache}, a left-padded row must generate what it generates alone: pass the " \
            "attention mask to every call and grow it by one column (a real token) per new token"


def _eos_rule(free, eos_ids, n):
    """The rule on rows generated without eos: each row keeps its tokens up to its first eos, then repeats it;
    the result ends after the step where the last row finished, or after n tokens."""
    firsts = [min([r.index(e) for e in eos_ids if e in r], default=None) for r in free]
    stop = n if None in firsts else max(firsts) + 1
    return [r[:stop] if f is None else (r[:f + 1] + [r[f]] * n)[:stop] for r, f in zip(free, firsts)]


def test_generate_rows_that_reached_eos_stay_eos():
    model, ids, n = _llama(11), _prompts(3, 4, seed=12), 10
    free = _greedy(model, ids, n).tolist()
    eos = free[0][1]  # row 0 produces it at step 1, the other rows never: generation runs all n steps
    want = _eos_rule(free, [eos], n)
    assert all(eos not in r for r in free[1:]) and want[0][1:] == [eos] * (n - 1)  # the case is what it says
    got = M.generate(model, ids, max_new_tokens=n, eos_id=eos).tolist()
    assert len(got[0]) == n, f"generation must go on to max_new_tokens = {n} while a row has not produced eos: " \
                             f"got {len(got[0])} tokens"
    assert got[0][:2] == free[0][:2], "tokens up to and including eos must be the model's own"
    assert got[0] == want[0], f"rows that reached eos must stay eos: row 0 produced eos {eos} at step 1, then " \
                              f"got {got[0][2:]}"
    assert got[1:] == free[1:], "a row that never produced eos must be unaffected by another row's eos"


def test_generate_stops_when_every_row_reached_eos():
    model, ids, n = _llama(11), _prompts(3, 4, seed=12), 10
    free = _greedy(model, ids, n).tolist()
    cases = [[free[0][6]], [free[0][1], free[1][2]]]  # one eos id that rows reach at steps 6, 7, 6; a list of two
    for eos_ids in cases:
        want = _eos_rule(free, eos_ids, n)
        assert len(want[0]) < n  # every row finishes early in both cases
        eos_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
        got = M.generate(model, ids, max_new_tokens=n, eos_id=eos_id).tolist()
        assert len(got[0]) == len(want[0]), \
            f"generation must stop once every row has produced eos (eos_id={eos_id}: after {len(want[0])} " \
            f"tokens here), not run on to max_new_tokens: got {len(got[0])} tokens"
        assert got == want, f"rows that reached eos must stay eos, the others go on (eos_id={eos_id}): got {got}, " \
                            f"expected {want}"


def test_generate_sampling_draws_from_the_given_generator():
    model, ids, n = _llama(13), _prompts(2, 4, seed=14), 6
    g = _gen(15)
    want, seq = [], ids
    with torch.no_grad():  # the reference: sample_next on the recomputed last logits, one draw per step
        for _ in range(n):
            nxt = M.sample_next(model(seq)[:, -1], 0.9, 0.8, g)
            want.append(nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
    want = torch.stack(want, 1).tolist()
    for use_cache in (True, False):
        got = M.generate(model, ids, max_new_tokens=n, temperature=0.9, top_p=0.8, use_cache=use_cache,
                         generator=_gen(15)).tolist()
        assert got == want, f"with use_cache={use_cache}, sampling must draw the next token with sample_next(last " \
                            "logits, temperature, top_p, generator), once per step, in order"
    assert want != _greedy(model, ids, n).tolist()  # sampling left the greedy path (the test can tell them apart)


class _ShiftAt(reft.Method):
    """A method with a residual edit only (seam 5): adds `delta` to the hidden state at positions [B, 1, 1]."""

    def __init__(self, delta):
        super().__init__()
        self.delta = delta

    def residual(self, layer, h, positions):
        rows = torch.arange(h.shape[0])
        h = h.clone()
        h[rows, positions[:, 0, 0]] += self.delta
        return h


def test_generate_applies_prompt_edits_at_prefill_only():
    model, ids, n = _llama(17), _prompts(2, 4, seed=18), 5
    method = _ShiftAt(3.0 * torch.randn(32, generator=_gen(19)))
    positions = torch.tensor([[[1]], [[2]]])  # [B, groups, slots]: one prompt token per row
    want, seq = [], ids
    with torch.no_grad():  # the reference: recompute everything with the same edits on the prompt tokens
        for _ in range(n):
            nxt = model(seq, None, None, method, positions)[:, -1].argmax(-1)
            want.append(nxt)
            seq = torch.cat([seq, nxt[:, None]], 1)
    want = torch.stack(want, 1).tolist()
    assert want != _greedy(model, ids, n).tolist()  # the edit changes the tokens (the test can tell)

    def check(rec):
        calls = rec.calls
        assert calls[0][3] is positions, "the prefill must pass the method's positions (its prompt edits)"
        if len(calls) > 1 and calls[-1][1] is not None:
            assert calls[-1][3] is None, \
                "decode steps must not pass positions: the prompt edits live in the KV cache already"

    for use_cache in (True, False):
        _Recorder(model, check)
        got = M.generate(model, ids, max_new_tokens=n, method=method, positions=positions, use_cache=use_cache)
        del model.forward
        assert got.tolist() == want, f"with use_cache={use_cache}, generate must pass the method to every call " \
                                     "and its positions with the prompt: the edits act on the prompt tokens only"


def test_generate_sizes_the_cache_for_a_methods_virtual_tokens():
    """With prefix-tuning the cache holds P prefix slots before the prompt: a cache sized prompt + new tokens only
    fills up ("KVCache is full") before the last token."""
    model, ids, n = _llama(23), _prompts(2, 6, seed=24), 6
    method = reft.PrefixTuning(2, 2, 8, num_virtual_tokens=5)
    try:
        got = M.generate(model, ids, max_new_tokens=n, method=method)
    except ValueError as e:
        if "KVCache is full" in str(e):
            raise AssertionError("the KV cache must hold the method's virtual tokens too: size it "
                                 "n_virtual + T + max_new_tokens (prefix-tuning's P slots come first)") from None
        raise
    assert got.shape == (2, n)
    assert got.tolist() == M.generate(model, ids, max_new_tokens=n, method=method, use_cache=False).tolist(), \
        "with prefix-tuning, cached generation must equal recomputing the whole sequence"


def test_generate_keeps_the_prompt_mask_when_recomputing():
    """use_cache=False recomputes the whole sequence with the same prompt mask (PEDRO pools the prompt alone): a
    reference that forgets it pools the generated tokens too, and then differs from cached generation."""
    model, ids, n = _llama(25), _prompts(2, 5, seed=26), 6
    method = reft.PEDRO([0, 1], 32, 32, 16, 64, rank=4, pooling="mean")
    with torch.no_grad():
        for gen in method.generators.values():
            gen[-1].weight.normal_(0, 0.5, generator=_gen(27))  # scales far from 1: the pooled tokens matter
    cached = M.generate(model, ids, max_new_tokens=n, method=method).tolist()
    full = M.generate(model, ids, max_new_tokens=n, method=method, use_cache=False).tolist()
    assert cached == full, "use_cache=False must pass the prompt mask (the prompt's tokens, 0 on generated ones) on " \
                           "every step: PEDRO's vectors come from the prompt alone, as at prefill"
