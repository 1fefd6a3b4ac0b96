"""Part `lm_loss` (WALKTHROUGH.md §6): train.lm_loss(model, method, batch, reduction), the cross-entropy over the
response tokens only (ReFT eq. 4): the logits at position t are scored against the token at t+1, labels are -100 on
the prompt and on padding, the logits are scored in fp32, and the result is their "mean" (over the response tokens)
or "sum".

lm_loss calls the whole model, whose parts are not this part: every case passes FakeModel below, which returns fixed
random logits [B, T, V] (a leaf tensor, so the case can see which logits the loss reads) and records how it was
called. The outputs are compared with the reference's (teach/expected/lm_loss.pt). No case holds the solution."""
import torch

from grading import Case, generator

V = 11  # the fake model's vocabulary


class FakeModel:
    """model.Llama's call signature; returns its fixed logits whatever it is given and records each call."""

    def __init__(self, logits):
        self.logits = logits.detach().clone().requires_grad_(True)
        self.calls = []

    def __call__(self, input_ids, attention_mask=None, cache=None, method=None, positions=None, prompt_mask=None):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache,
                           "method": method, "positions": positions, "prompt_mask": prompt_mask})
        if tuple(input_ids.shape) != tuple(self.logits.shape[:2]):
            raise ValueError(f"the model got input_ids of shape {tuple(input_ids.shape)}, expected batch['input_ids'] "
                             f"{tuple(self.logits.shape[:2])}")
        return self.logits


def _batch(seed, offset, prompt_lens, lengths, T):
    """A right-padded batch as data.collate makes it: input_ids, attention_mask, prompt_mask, labels (-100 on the
    prompt and padding) and one ReFT position per row."""
    g = generator(seed, offset)
    B = len(lengths)
    ids = torch.randint(1, V, (B, T), generator=g)
    batch = {"input_ids": torch.zeros(B, T, dtype=torch.long), "attention_mask": torch.zeros(B, T, dtype=torch.long),
             "prompt_mask": torch.zeros(B, T, dtype=torch.long), "labels": torch.full((B, T), -100, dtype=torch.long)}
    for i, (p, n) in enumerate(zip(prompt_lens, lengths)):
        batch["input_ids"][i, :n] = ids[i, :n]
        batch["attention_mask"][i, :n] = 1
        batch["prompt_mask"][i, :p] = 1
        batch["labels"][i, p:n] = ids[i, p:n]
    batch["positions"] = torch.stack([torch.randint(0, p, (1, 1), generator=g) for p in prompt_lens])  # [B, 1, 1]
    return batch


def _logits(seed, offset, B, T):
    return 2 * torch.randn(B, T, V, generator=generator(seed, offset))


def _loss(logits, batch, reduction="mean", method=None):
    import train as T
    model = FakeModel(logits)
    return T.lm_loss(model, method, batch, reduction=reduction), model


def _value(loss):
    """The loss as a float64 scalar tensor (a tensor of another shape stays as it is, and fails the comparison)."""
    return loss.detach().double() if isinstance(loss, torch.Tensor) else loss


def run_mean_matches_the_closed_form(seed):
    batch = _batch(seed, 1, (3, 2), (6, 4), 7)
    loss, _ = _loss(_logits(seed, 2, 2, 7), batch, "mean")
    return {"loss": _value(loss)}


def run_scores_logits_at_t_against_the_token_at_t_plus_1(seed):
    batch = _batch(seed, 3, (3, 2), (6, 4), 7)
    logits = _logits(seed, 4, 2, 7)
    labels = batch["labels"]
    for b in range(2):  # logits that put almost all mass on the next response token: the shifted loss is near 0
        for t in range(6):
            if labels[b, t + 1] != -100:
                logits[b, t, labels[b, t + 1]] += 8.0
    loss, _ = _loss(logits, batch, "mean")
    return {"loss": _value(loss)}


def run_ignores_prompt_and_padding_tokens(seed):
    batch, logits = _batch(seed, 5, (3, 2), (6, 4), 7), _logits(seed, 6, 2, 7)
    loss, model = _loss(logits, batch, "mean")
    other = {k: v.clone() for k, v in batch.items()}
    off = batch["labels"] == -100  # other ids on the prompt and the padding: the loss must not change
    other["input_ids"][off] = (batch["input_ids"][off] + 1 + torch.randint(0, V - 1, (int(off.sum()),),
                                                                             generator=generator(seed, 7))) % V
    loss_other, _ = _loss(logits, other, "mean")
    loss.backward()
    return {"loss": _value(loss), "loss_other_prompt_ids": _value(loss_other), "logits_grad": model.logits.grad}


def run_sum_and_mean(seed):
    batch, logits = _batch(seed, 8, (2, 1), (7, 3), 7), _logits(seed, 9, 2, 7)
    total, _ = _loss(logits, batch, "sum")
    mean, _ = _loss(logits, batch, "mean")
    return {"sum": _value(total), "mean": _value(mean)}


def run_calls_the_model_with_the_batch_and_the_method(seed):
    batch, logits = _batch(seed, 10, (3, 2), (6, 4), 7), _logits(seed, 11, 2, 7)
    method = object()  # any object: lm_loss passes it on
    _, model = _loss(logits, batch, "mean", method=method)
    c = model.calls[0] if model.calls else {}
    same = lambda k: isinstance(c.get(k), torch.Tensor) and torch.equal(c[k], batch[k])  # noqa: E731
    out = {"model_calls": len(model.calls), "passes_method": c.get("method") is method,
           "passes_attention_mask": same("attention_mask"), "passes_positions": same("positions"),
           "passes_prompt_mask": same("prompt_mask")}
    del batch["positions"]  # prefix-tuning and PEDRO batches carry none
    loss, model = _loss(logits, batch, "mean")
    out["positions_none_without_positions"] = bool(model.calls) and model.calls[0]["positions"] is None
    out["loss_without_positions"] = _value(loss)
    return out


def run_rows_of_different_lengths(seed):
    # three rows: prompt lengths 1, 4 and 2 with 3, 1 and 4 response tokens, right-padded to T = 8
    batch, logits = _batch(seed, 12, (1, 4, 2), (4, 5, 6), 8), _logits(seed, 13, 3, 8)
    return {reduction: _value(_loss(logits, batch, reduction)[0]) for reduction in ("mean", "sum")}


def run_scores_bf16_logits_in_fp32(seed):
    batch = _batch(seed, 14, (2, 3), (7, 5), 7)
    logits = (4 * torch.randn(2, 7, V, generator=generator(seed, 15))).bfloat16()  # a bf16 model's logits
    return {reduction: _value(_loss(logits, batch, reduction)[0]) for reduction in ("mean", "sum")}


TOKENS = "the mean over the response tokens of -log softmax(logits[t])[labels[t+1]]"
CASES = [
    Case("mean_matches_the_closed_form", run_mean_matches_the_closed_form,
         "lm_loss (mean) of random logits [2, 7, 11] on a right-padded batch with 3 and 2 response tokens",
         hints={"loss": TOKENS}),
    Case("scores_logits_at_t_against_the_token_at_t_plus_1", run_scores_logits_at_t_against_the_token_at_t_plus_1,
         "lm_loss (mean) of logits that put almost all mass on the next response token (the right loss is small)",
         atol=1e-6, hints={"loss": "logits at t must be scored against the token at t+1: logits[:, :-1] against "
                                   "labels[:, 1:]"}),
    Case("ignores_prompt_and_padding_tokens", run_ignores_prompt_and_padding_tokens,
         "lm_loss (mean), again with other prompt/padding ids, and its gradient in the logits",
         hints={"loss": TOKENS,
                "loss_other_prompt_ids": "the prompt and padding ids must not matter: score batch['labels'] (-100 "
                                         "there), not batch['input_ids']",
                "logits_grad": "only logits[t] with a response token at t+1 may be scored, and every such one must "
                               "be (no detach, no .item())"}),
    Case("sum_and_mean", run_sum_and_mean, "lm_loss with reduction 'sum' and 'mean' on rows of 5 and 2 response tokens",
         hints={"sum": "reduction='sum' must add the per-token losses of the response tokens (pass `reduction` on)",
                "mean": "reduction='mean' must be the sum over the response tokens divided by their number"}),
    Case("calls_the_model_with_the_batch_and_the_method", run_calls_the_model_with_the_batch_and_the_method,
         "how lm_loss calls the model, with a method and a batch with positions, then a batch without them",
         hints={"model_calls": "lm_loss must call the model once",
                "passes_method": "lm_loss must pass the method to the model (model(..., method=method))",
                "passes_attention_mask": "lm_loss must pass batch['attention_mask'] to the model",
                "passes_positions": "lm_loss must pass batch['positions'] to the model (where a ReFT method edits)",
                "passes_prompt_mask": "lm_loss must pass batch['prompt_mask'] to the model (PEDRO reads the prompt "
                                      "from it)",
                "positions_none_without_positions": "a batch without 'positions' (prefix-tuning, PEDRO) must work: "
                                                    "the model then gets positions=None (batch.get)",
                "loss_without_positions": "a batch without 'positions' (prefix-tuning, PEDRO) must work"}),
    Case("rows_of_different_lengths", run_rows_of_different_lengths,
         "lm_loss (mean and sum) on 3 rows of 3, 1 and 4 response tokens after prompts of 1, 4 and 2, right-padded "
         "to 8", hints={"mean": TOKENS + ", every token weighing the same (not a mean of per-row means)"}),
    Case("scores_bf16_logits_in_fp32", run_scores_bf16_logits_in_fp32,
         "lm_loss (mean and sum) of a bf16 model's logits",
         hints={"mean": "score the logits in fp32 (.float()): in bf16 the loss keeps only about 3 significant digits",
                "sum": "score the logits in fp32 (.float()): in bf16 the loss keeps only about 3 significant digits"}),
]
