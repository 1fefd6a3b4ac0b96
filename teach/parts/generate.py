"""Part `generate` (WALKTHROUGH.md §5): model.generate after its context check.

  prefill    one forward over the (left-padded) prompt, filling a KV cache sized for everything it will hold
  decode     one forward per further new token, feeding only that token [B, 1] and reusing the cache, the attention
             mask grown by one column per step; the method goes along, its positions (prompt edits) do not
  no cache   use_cache=False recomputes the whole sequence every step (same prompt edits, same prompt mask)
  eos        rows that produced eos_id are filled with eos_id; the loop stops when every row has, or after
             max_new_tokens

generate calls the whole model, whose parts are not this part: every case runs it on FakeLM below, a stand-in with
Llama's call signature and its own arithmetic (no transformer). FakeLM keeps an honest cache (the cached calls give
the logits the uncached ones give, and it refuses what model.Llama refuses: a full cache, a mask of the wrong shape),
so what generate returns, and the calls the fake saw, are compared with the reference's (teach/expected/generate.pt).
No case holds the solution."""
import torch

from grading import Case, generator

V, D, MAX_POS = 48, 16, 64  # the fake's vocabulary, vector width and context


class Refused(ValueError):
    """A call FakeLM refuses, as model.Llama would (the text is model.py's)."""


class _Config:
    max_position_embeddings, vocab_size = MAX_POS, V


class FakeCache:
    """What model.KVCache is to generate: `length` filled slots out of `max_len`, `method_state` (a method's values
    from the prefill, reused at decode). Its slots hold FakeLM's token vectors [B, max_len, D]."""

    def __init__(self, batch_size, max_len):
        self.max_len, self.length, self.method_state = max_len, 0, {}
        self.slots = torch.zeros(batch_size, max_len, D, dtype=torch.float64)


class FakeMethod:
    """A stand-in for a reft.py method, read by FakeLM only: P virtual vectors before the real tokens (prefix-tuning's
    num_virtual_tokens), a residual edit on the tokens at `positions` (LoReFT), or scales from a summary pooled over
    the prompt tokens (PEDRO; kept in cache.method_state for decode steps)."""

    def __init__(self, seed, offset, num_virtual_tokens=0, edits=False, pools_prompt=False):
        g = generator(seed, offset)
        self.num_virtual_tokens, self.edits, self.pools_prompt = num_virtual_tokens, edits, pools_prompt
        self.virtual = 2 * torch.randn(num_virtual_tokens, D, generator=g, dtype=torch.float64)
        self.delta = 3 * torch.randn(D, generator=g, dtype=torch.float64)
        self.scale = torch.randn(D, D, generator=g, dtype=torch.float64)


class FakeLM:
    """Llama's call signature, logits [B, T, V]: a token's vector is E[id] + Q[its position among the real tokens]
    (+ a method's edit at `positions`); it reads the mean of the vectors it may see (the method's virtual ones, then
    the real tokens up to itself that attention_mask keeps) plus its own; a pooling method scales that by the prompt
    summary. Every call is recorded in `calls`."""

    def __init__(self, seed):
        g = generator(seed, 1000)
        self.config = _Config()
        self.E = 2 * torch.randn(V, D, generator=g, dtype=torch.float64)
        self.Q = 2 * torch.randn(MAX_POS, D, generator=g, dtype=torch.float64)
        self.next = torch.randn(V, V, generator=g, dtype=torch.float64) - 2 * torch.eye(V)  # a bigram table
        self.at = torch.randn(MAX_POS, V, generator=g, dtype=torch.float64)  # a per-position one
        self.W = torch.randn(D, V, generator=g, dtype=torch.float64) / D ** 0.5
        self.calls = []

    def new_cache(self, batch_size, max_len):
        return FakeCache(batch_size, max_len)

    def __call__(self, input_ids, attention_mask=None, cache=None, method=None, positions=None, prompt_mask=None):
        B, T = input_ids.shape
        P = method.num_virtual_tokens if method is not None else 0
        past = cache.length if cache is not None else 0
        n_real = (past - P if past else 0) + T  # real tokens, past and current
        self.calls.append({"T": T, "cache": cache, "past": past, "positions": positions, "prompt_mask": prompt_mask})
        if P + n_real > MAX_POS:
            raise Refused(f"sequence of {n_real} tokens (+{P} virtual) is longer than the model's context")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, n_real):
            raise Refused(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, n_real)} (batch, "
                          "past + current real tokens)")
        keep = torch.ones(B, n_real, dtype=torch.float64) if attention_mask is None else attention_mask.double()
        pos = (keep.cumsum(-1) - 1).clamp(min=0)[:, -T:].long()
        x = self.E[input_ids] + self.Q[pos]  # [B, T, D]
        if method is not None and method.edits and positions is not None:
            if int(positions.max()) >= T:
                raise Refused(f"positions {positions.flatten().tolist()} point past this call's {T} token(s)")
            x = x.clone()
            for b in range(B):
                x[b, positions[b].flatten()] += method.delta
        new = torch.cat([method.virtual.expand(B, P, D), x], 1) if P and past == 0 else x
        if cache is not None:
            end = past + new.shape[1]
            if end > cache.max_len:
                raise Refused(f"KVCache is full: {end} positions needed, {cache.max_len} allocated")
            cache.slots[:, past:end] = new
            cache.length = end
            seen = cache.slots[:, :end]
        else:
            seen = new
        sees = torch.cat([torch.ones(B, P, dtype=torch.float64), keep], 1)[:, None].expand(B, T, P + n_real).clone()
        sees[:, :, P:] *= torch.ones(T, n_real, dtype=torch.float64).tril(n_real - T)  # causal over real tokens
        h = (sees @ seen) / sees.sum(-1, keepdim=True).clamp(min=1)  # [B, T, D]
        if method is not None and method.pools_prompt:
            if cache is not None and "prompt" in cache.method_state:
                summary = cache.method_state["prompt"]
            else:
                m = prompt_mask if prompt_mask is not None else attention_mask[:, -T:] if attention_mask is not None \
                    else torch.ones(B, T)
                m = (m > 0).double()
                summary = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)  # [B, D]
                if cache is not None:
                    cache.method_state["prompt"] = summary
            h = h * (1 + torch.tanh(summary @ method.scale))[:, None]
        return (self.next[input_ids] + self.at[pos] + h @ self.W).float()


def _prompts(seed, offset, B, T):
    return torch.randint(3, V, (B, T), generator=generator(seed, offset))


def _left_padded(seed, offset, lengths):
    T = max(lengths)
    rows = [_prompts(seed, offset + i, 1, n)[0] for i, n in enumerate(lengths)]
    ids = torch.stack([torch.cat([torch.zeros(T - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(T - len(r), dtype=torch.long), torch.ones(len(r), dtype=torch.long)])
                        for r in rows])
    return ids, mask, rows


def _cached_calls_ok(calls, T):
    """The prefill got the whole prompt [B, T] and an empty cache; every later call one token and the same cache,
    filled up to where the previous call left it."""
    if not calls or calls[0]["T"] != T or calls[0]["cache"] is None or calls[0]["past"] != 0:
        return False
    cache = calls[0]["cache"]
    return all(c["T"] == 1 and c["cache"] is cache and c["past"] > p["past"] for p, c in zip(calls, calls[1:]))


def _uncached_calls_ok(calls, T):
    """No cache; call i got the prompt and the i tokens generated so far."""
    return bool(calls) and all(c["cache"] is None and c["T"] == T + i for i, c in enumerate(calls))


def _generate(seed, ids, mask=None, use_cache=True, **kw):
    """generate on a fresh FakeLM: (refused: the text of a call the model refused, or "", tokens or None, calls)."""
    import model as M
    fake = FakeLM(seed)
    try:
        tokens = M.generate(fake, ids, mask, use_cache=use_cache, **kw)
    except Refused as e:
        return str(e), None, fake.calls
    return "", tokens, fake.calls


def run_greedy_equals_recomputation(seed):
    ids = _prompts(seed, 1, 3, 5)
    refused, tokens, _ = _generate(seed, ids, max_new_tokens=8)
    refused_u, tokens_u, _ = _generate(seed, ids, max_new_tokens=8, use_cache=False)
    return {"refused": refused, "tokens": tokens, "refused_uncached": refused_u, "tokens_uncached": tokens_u}


def run_decode_feeds_one_token_and_reuses_the_cache(seed):
    ids = _prompts(seed, 2, 2, 4)
    refused, tokens, calls = _generate(seed, ids, max_new_tokens=6)
    return {"refused": refused, "calls_ok": _cached_calls_ok(calls, 4), "tokens": tokens}


def run_without_cache_recomputes_the_whole_sequence(seed):
    ids = _prompts(seed, 3, 2, 3)
    refused, tokens, calls = _generate(seed, ids, max_new_tokens=5, use_cache=False)
    return {"refused": refused, "calls_ok": _uncached_calls_ok(calls, 3), "tokens": tokens}


def run_left_padded_rows_equal_each_row_alone(seed):
    ids, mask, rows = _left_padded(seed, 4, (5, 2, 4))
    out = {}
    for name, use_cache in (("cached", True), ("uncached", False)):
        refused, tokens, _ = _generate(seed, ids, mask, use_cache, max_new_tokens=6)
        out |= {f"refused_{name}": refused, f"tokens_{name}": tokens}
    alone = [_generate(seed, r[None], max_new_tokens=6) for r in rows]
    out["refused_alone"] = [r for r, _, _ in alone]
    out["tokens_alone"] = [t for _, t, _ in alone]
    return out


def run_rows_that_reached_eos_stay_eos(seed):
    ids = _prompts(seed, 8, 3, 4)
    refused, free, _ = _generate(seed, ids, max_new_tokens=10)
    if free is None:
        return {"refused": refused, "tokens": None}
    eos = int(free[0, 1])  # row 0 produces it by step 1
    refused, tokens, _ = _generate(seed, ids, max_new_tokens=10, eos_id=eos)
    return {"refused": refused, "tokens": tokens}


def run_stops_when_every_row_reached_eos(seed):
    ids = _prompts(seed, 9, 3, 4)
    refused, free, _ = _generate(seed, ids, max_new_tokens=10)
    if free is None:
        return {"refused_one_eos": refused, "tokens_one_eos": None, "refused_eos_list": refused,
                "tokens_eos_list": None}
    common = [int(t) for t in free[0] if all(t in row for row in free[1:])]
    one = common[0] if common else int(free[0, 2])  # a token every row produces, if there is one
    several = [int(free[1, 3]), int(free[2, 2]), int(free[0, 4])]  # every row stops by step 4
    refused, tokens, _ = _generate(seed, ids, max_new_tokens=10, eos_id=one)
    refused_list, tokens_list, _ = _generate(seed, ids, max_new_tokens=10, eos_id=several)
    return {"refused_one_eos": refused, "tokens_one_eos": tokens, "refused_eos_list": refused_list,
            "tokens_eos_list": tokens_list}


def run_sampling_draws_from_the_given_generator(seed):
    ids = _prompts(seed, 10, 2, 4)
    out = {}
    for name, use_cache in (("cached", True), ("uncached", False)):
        refused, tokens, _ = _generate(seed, ids, use_cache=use_cache, max_new_tokens=6, temperature=0.9, top_p=0.8,
                                       generator=generator(seed, 11))
        out |= {f"refused_{name}": refused, f"tokens_{name}": tokens}
    return out


def run_applies_prompt_edits_at_prefill_only(seed):
    ids = _prompts(seed, 12, 2, 4)
    positions = torch.randint(1, 4, (2, 1, 1), generator=generator(seed, 13))  # one prompt token per row
    out = {}
    for name, use_cache in (("cached", True), ("uncached", False)):
        method = FakeMethod(seed, 14, edits=True)
        refused, tokens, calls = _generate(seed, ids, use_cache=use_cache, max_new_tokens=5, method=method,
                                           positions=positions)
        with_positions = [c["positions"] is not None for c in calls]
        out |= {f"refused_{name}": refused,
                f"positions_at_prefill_{name}": bool(with_positions) and with_positions[0],
                f"tokens_{name}": tokens}
    return out


def run_sizes_the_cache_for_a_methods_virtual_tokens(seed):
    ids = _prompts(seed, 15, 2, 6)
    out = {}
    for name, use_cache in (("cached", True), ("uncached", False)):
        method = FakeMethod(seed, 16, num_virtual_tokens=5)
        refused, tokens, _ = _generate(seed, ids, use_cache=use_cache, max_new_tokens=6, method=method)
        out |= {f"refused_{name}": refused, f"tokens_{name}": tokens}
    return out


def run_keeps_the_prompt_mask_when_recomputing(seed):
    ids, mask, _ = _left_padded(seed, 17, (5, 3))
    out = {}
    for name, use_cache in (("cached", True), ("uncached", False)):
        method = FakeMethod(seed, 19, pools_prompt=True)
        refused, tokens, _ = _generate(seed, ids, mask, use_cache, max_new_tokens=6, method=method)
        out |= {f"refused_{name}": refused, f"tokens_{name}": tokens}
    return out


REFUSED = "the text of the call the model refused, empty when it refused none"
CASES = [
    Case("greedy_equals_recomputation", run_greedy_equals_recomputation,
         "greedy generate (temperature 0) of 8 new tokens for 3 prompts of 5 tokens, with and without the cache",
         hints={"refused": REFUSED, "refused_uncached": REFUSED,
                "tokens": "greedy: the argmax of the last logits at each step; the new tokens only, [B, "
                          "max_new_tokens]; with the cache they must equal what use_cache=False gives",
                "tokens_uncached": "use_cache=False: the whole sequence so far, every step; argmax of the last "
                                   "logits"}),
    Case("decode_feeds_one_token_and_reuses_the_cache", run_decode_feeds_one_token_and_reuses_the_cache,
         "generate with the cache, 6 new tokens for 2 prompts of 4 tokens",
         hints={"refused": REFUSED,
                "calls_ok": "the first call must be the prefill (the whole prompt [B, T] into a new, empty cache), "
                            "every later call one token [B, 1] with that same cache"}),
    Case("without_cache_recomputes_the_whole_sequence", run_without_cache_recomputes_the_whole_sequence,
         "generate with use_cache=False, 5 new tokens for 2 prompts of 3 tokens",
         hints={"refused": REFUSED,
                "calls_ok": "use_cache=False must call the model without a cache on the prompt and every token "
                            "generated so far: inputs of 3, 4, 5, ... tokens"}),
    Case("left_padded_rows_equal_each_row_alone", run_left_padded_rows_equal_each_row_alone,
         "generate for 3 left-padded prompts of 5, 2 and 4 tokens (with and without the cache), and for each alone",
         hints={"refused_cached": REFUSED, "refused_uncached": REFUSED,
                "tokens_cached": "a left-padded row must generate what it generates alone: pass the attention mask "
                                 "to every call and grow it by one column of ones per new token",
                "tokens_uncached": "a left-padded row must generate what it generates alone: pass the attention mask "
                                   "to every call and grow it by one column of ones per new token"}),
    Case("rows_that_reached_eos_stay_eos", run_rows_that_reached_eos_stay_eos,
         "generate of up to 10 tokens for 3 prompts, eos_id = the token row 0 produces at step 1",
         hints={"refused": REFUSED,
                "tokens": "a row that produced eos_id must emit eos_id from then on; the others go on, up to "
                          "max_new_tokens while any row has not produced it"}),
    Case("stops_when_every_row_reached_eos", run_stops_when_every_row_reached_eos,
         "generate of up to 10 tokens for 3 prompts, with an eos_id int and with a list of 3 eos ids that every "
         "row produces by step 4",
         hints={"refused_one_eos": REFUSED, "refused_eos_list": REFUSED,
                "tokens_eos_list": "generation must stop once every row has produced one of the eos ids (a list: any "
                                   "of them ends a row); the result then has fewer than max_new_tokens columns"}),
    Case("sampling_draws_from_the_given_generator", run_sampling_draws_from_the_given_generator,
         "generate with temperature 0.9, top_p 0.8 and a torch.Generator, with and without the cache",
         hints={"refused_cached": REFUSED, "refused_uncached": REFUSED,
                "tokens_cached": "sample each token with sample_next(last logits, temperature, top_p, generator), "
                                 "once per step, in order",
                "tokens_uncached": "sample each token with sample_next(last logits, temperature, top_p, generator), "
                                   "once per step, in order"}),
    Case("applies_prompt_edits_at_prefill_only", run_applies_prompt_edits_at_prefill_only,
         "generate with a method that edits one prompt token per row (positions [2, 1, 1]), with and without the "
         "cache",
         hints={"refused_cached": REFUSED, "refused_uncached": REFUSED,
                "positions_at_prefill_cached": "the prefill must pass the method's positions (its prompt edits)",
                "positions_at_prefill_uncached": "the first call must pass the method's positions (its prompt edits)",
                "tokens_cached": "pass the method to every call and its positions with the prompt only: the edits "
                                 "live in the cache for decode steps",
                "tokens_uncached": "use_cache=False must pass the method and its positions on every call (the edits "
                                   "act on the prompt tokens of the whole sequence)"}),
    Case("sizes_the_cache_for_a_methods_virtual_tokens", run_sizes_the_cache_for_a_methods_virtual_tokens,
         "generate with a method that puts 5 virtual tokens before the prompt (prefix-tuning), with and without "
         "the cache",
         hints={"refused_cached": "the model refused a call: the KV cache must hold the method's virtual tokens "
                                  "too (n_virtual + T + max_new_tokens slots)",
                "refused_uncached": REFUSED}),
    Case("keeps_the_prompt_mask_when_recomputing", run_keeps_the_prompt_mask_when_recomputing,
         "generate with a method that pools the prompt (PEDRO) for 2 left-padded prompts, with and without the cache",
         hints={"refused_cached": REFUSED, "refused_uncached": REFUSED,
                "tokens_cached": "the prefill must pass the prompt mask (the prompt's real tokens): the method pools "
                                 "the prompt alone and keeps the result in the cache",
                "tokens_uncached": "use_cache=False must pass the prompt mask on every call (the prompt's tokens, 0 "
                                   "on the generated ones): the method pools the prompt alone, as at prefill"}),
]
