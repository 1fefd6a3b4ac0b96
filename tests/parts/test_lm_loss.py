"""Part `lm_loss` (WALKTHROUGH.md §6): train.lm_loss(model, method, batch, reduction), the cross-entropy over the
response tokens only (ReFT eq. 4): the logits at position t are scored against the token at t+1, labels are -100 on
the prompt and on padding, and the result is their "mean" or "sum".

Graded by teach/assignment.py: plain test functions, no fixtures; each failure message names the mistake.
The model is a stand-in that returns fixed logits, so only lm_loss itself is under test."""
import torch
import torch.nn as nn

import train

V = 11  # vocabulary of the fake model


class FakeModel(nn.Module):
    """Returns fixed logits [B, T, V] whatever it is given (the signature of model.Llama.forward), and remembers
    the arguments of its last call."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.calls = []

    def forward(self, input_ids, attention_mask=None, cache=None, method=None, positions=None, prompt_mask=None):
        self.calls.append(dict(input_ids=input_ids, attention_mask=attention_mask, cache=cache, method=method,
                               positions=positions, prompt_mask=prompt_mask))
        assert input_ids.shape == self.logits.shape[:2], \
            f"the model must be called on batch['input_ids'] [B, T], got shape {tuple(input_ids.shape)}"
        return self.logits


def _batch(prompt_lens=(3, 2), lengths=(6, 4), T=7, seed=0):
    """A right-padded batch as data.collate makes it: input_ids, attention_mask, prompt_mask, labels (-100 on the
    prompt and padding) and one ReFT position per row."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    ids = torch.randint(1, V, (B, T), generator=g)
    batch = {"input_ids": torch.zeros(B, T, dtype=torch.long), "attention_mask": torch.zeros(B, T, dtype=torch.long),
             "prompt_mask": torch.zeros(B, T, dtype=torch.long), "labels": torch.full((B, T), -100, dtype=torch.long)}
    for i, (p, n) in enumerate(zip(prompt_lens, lengths)):
        batch["input_ids"][i, :n] = ids[i, :n]
        batch["attention_mask"][i, :n] = 1
        batch["prompt_mask"][i, :p] = 1
        batch["labels"][i, p:n] = ids[i, p:n]
    batch["positions"] = torch.tensor([[[0]], [[1]]])[:B]  # [B, G=1, slots=1]
    return batch


def _logits(B=2, T=7, seed=1):
    return 2 * torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed))


def _reference(logits, targets, reduction):
    """fp64, one token at a time: -log softmax(logits[b, t])[targets[b, t + 1]] over the t whose target is not -100."""
    lp = logits.double().log_softmax(-1)
    terms = [-lp[b, t, targets[b, t + 1]] for b in range(targets.shape[0]) for t in range(targets.shape[1] - 1)
             if targets[b, t + 1] != -100]
    total = torch.stack(terms).sum()
    return total / len(terms) if reduction == "mean" else total


def _unshifted(logits, targets):
    """The mistake: logits at t scored against the token at t."""
    lp = logits.double().log_softmax(-1)
    terms = [-lp[b, t, targets[b, t]] for b in range(targets.shape[0]) for t in range(targets.shape[1])
             if targets[b, t] != -100]
    return torch.stack(terms).mean()


def _loss(logits, batch, reduction="mean", method=None):
    model = FakeModel(logits)
    loss = train.lm_loss(model, method, batch, reduction=reduction)
    assert torch.is_tensor(loss) and loss.dim() == 0, f"lm_loss must return a scalar tensor, got {loss!r}"
    return loss, model


def test_lm_loss_mean_matches_the_closed_form():
    batch, logits = _batch(), _logits()
    loss, _ = _loss(logits, batch, "mean")
    want = _reference(logits, batch["labels"], "mean")
    assert abs(float(loss.detach()) - float(want)) < 1e-5, \
        f"lm_loss (mean) is {float(loss.detach()):.6f}, expected {float(want):.6f}: the mean over the response " \
        "tokens of -log softmax(logits[t])[token t+1]"


def test_lm_loss_scores_logits_at_t_against_the_token_at_t_plus_1():
    batch = _batch()
    # logits that put almost all mass on the next token at response positions: the shifted loss is near 0
    logits = _logits(seed=2)
    for b in range(2):
        for t in range(6):
            nxt = int(batch["labels"][b, t + 1])
            if nxt != -100:
                logits[b, t, nxt] += 20.0
    loss, _ = _loss(logits, batch, "mean")
    if abs(float(loss.detach()) - float(_reference(logits, batch["input_ids"], "mean"))) < 1e-4:
        raise AssertionError("loss counts prompt tokens (labels are -100 there): it scores batch['input_ids'], "
                             "use batch['labels']")
    if abs(float(loss.detach()) - float(_unshifted(logits, batch["labels"]))) < 1e-4:
        raise AssertionError("logits at t must be scored against the token at t+1 (shift by one): the loss scores "
                             "logits[t] against labels[t]")
    want = _reference(logits, batch["labels"], "mean")
    assert abs(float(loss.detach()) - float(want)) < 1e-4, \
        f"logits at t must be scored against the token at t+1: with logits that predict the next response token " \
        f"the loss must be {float(want):.2e}, got {float(loss.detach()):.4f} (logits[:, :-1] against labels[:, 1:])"


def test_lm_loss_ignores_prompt_and_padding_tokens():
    batch, logits = _batch(), _logits(seed=3)
    loss, model = _loss(logits, batch, "mean")
    # the prompt and padding ids must not matter: labels are -100 there
    other = {k: v.clone() for k, v in batch.items()}
    other["input_ids"][batch["labels"] == -100] = (batch["input_ids"][batch["labels"] == -100] + 5) % V
    loss2, _ = _loss(logits, other, "mean")
    assert abs(float(loss.detach()) - float(loss2.detach())) < 1e-6, \
        "loss counts prompt tokens (labels are -100 there): changing the prompt/padding ids changed the loss; " \
        "score batch['labels'], not batch['input_ids']"
    loss.backward()
    g = model.logits.grad
    assert g is not None, "lm_loss must be differentiable in the model's logits (no detach, no .item())"
    nxt = torch.cat([batch["labels"][:, 1:], torch.full((2, 1), -100)], 1)  # the label each logit is scored against
    scored = g.abs().sum(-1) > 0  # [B, T]: the logits the loss reads
    if torch.equal(scored, batch["labels"] != -100):
        raise AssertionError("logits at t must be scored against the token at t+1: the loss reads the logits at the "
                             "response positions themselves instead of those one step before them")
    assert not scored[nxt == -100].any(), \
        "the loss reads logits whose next label is -100 (prompt, padding): only logits[t] with a response token at " \
        "t+1 may be scored (labels[:, 1:], ignore_index=-100)"
    assert float(g[nxt != -100].abs().min()) > 0, "every response token must be scored (its logits get a gradient)"


def test_lm_loss_sum_and_mean():
    batch, logits = _batch(prompt_lens=(2, 1), lengths=(7, 3)), _logits(seed=4)
    total, _ = _loss(logits, batch, "sum")
    mean, _ = _loss(logits, batch, "mean")
    n = int((batch["labels"][:, 1:] != -100).sum())
    want = _reference(logits, batch["labels"], "sum")
    assert abs(float(total.detach()) - float(want)) < 1e-4, \
        f"reduction='sum' must add the per-token losses of the {n} response tokens: expected {float(want):.5f}, " \
        f"got {float(total.detach()):.5f} (is `reduction` passed on?)"
    assert abs(float(mean.detach()) * n - float(total.detach())) < 1e-4, \
        f"reduction='mean' must be the sum over the response tokens divided by their number ({n}), not by B·T"


def test_lm_loss_calls_the_model_with_the_batch_and_the_method():
    batch, logits = _batch(), _logits(seed=5)
    method = nn.Identity()  # any object: lm_loss passes it on
    _, model = _loss(logits, batch, "mean", method=method)
    assert len(model.calls) == 1, f"lm_loss must call the model once, it called it {len(model.calls)} times"
    c = model.calls[0]
    assert c["method"] is method, "lm_loss must pass the method to the model (model(..., method=method))"
    assert c["attention_mask"] is not None and torch.equal(c["attention_mask"], batch["attention_mask"]), \
        "lm_loss must pass batch['attention_mask'] to the model"
    assert c["positions"] is not None and torch.equal(c["positions"], batch["positions"]), \
        "lm_loss must pass batch['positions'] to the model (where a ReFT method edits)"
    assert c["prompt_mask"] is not None and torch.equal(c["prompt_mask"], batch["prompt_mask"]), \
        "lm_loss must pass batch['prompt_mask'] to the model (PEDRO reads the prompt from it)"
    # prefix-tuning and PEDRO batches carry no positions
    del batch["positions"]
    try:
        loss, model = _loss(logits, batch, "mean")
    except KeyError as e:
        raise AssertionError(f"a batch without 'positions' (prefix-tuning, PEDRO) must work: KeyError {e}") from None
    assert model.calls[0]["positions"] is None, "without batch['positions'] the model must get positions=None"
    assert abs(float(loss.detach()) - float(_reference(logits, batch["labels"], "mean"))) < 1e-5, \
        "lm_loss of a batch without 'positions' is not the mean over its response tokens"


def test_lm_loss_rows_of_different_lengths():
    # three rows: prompt lengths 1, 4 and 2 with 3, 1 and 4 response tokens, right-padded to T = 8
    batch = _batch(prompt_lens=(1, 4, 2), lengths=(4, 5, 6), T=8, seed=6)
    batch["positions"] = torch.zeros(3, 1, 1, dtype=torch.long)
    logits = _logits(B=3, T=8, seed=7)
    for reduction in ("mean", "sum"):
        loss, _ = _loss(logits, batch, reduction)
        want = _reference(logits, batch["labels"], reduction)
        assert abs(float(loss.detach()) - float(want)) < 1e-4, \
            f"lm_loss ({reduction}) is wrong on rows of different prompt and response lengths: expected " \
            f"{float(want):.5f}, got {float(loss.detach()):.5f}"
