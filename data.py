"""
data.py: instruction records -> token ids, labels and ReFT positions, padded into batches.

One record {"prompt", "response"} (or Alpaca's {"instruction", "input", "output"}) becomes
    input_ids  = BOS + prompt tokens + response tokens + END        (the prompt is tokenised on its own)
    labels     = -100 on every prompt token, then the response tokens + END (the loss covers only these; ReFT eq. 4)
    prompt_len = number of prompt tokens (BOS included): what generation sees, and what the positions count
With an instruct checkpoint's chat template (--template chat, or auto where the tokenizer has one) the prompt is the
template's rendering of the record as one user turn (its own BOS, system block and assistant header; support/chat.py)
and END is the token that ends the assistant's turn (<|eot_id|>, <|im_end|>).
`collate` pads a list of them into tensors and asks reft.PositionScheme where a ReFT method edits each row.
Reading files (support/records.py), tokenizers (support/tokenizer.py) and classification data
(support/classify.py) live in the support package.
"""
import sys

import torch

from reft import PositionScheme

TEMPLATES = {
    # Stanford Alpaca's prompt (used by the ReFT paper's instruction-tuning runs), with and without an input
    "alpaca": ("Below is an instruction that describes a task, paired with an input that provides further context. "
               "Write a response that appropriately completes the request.\n\n"
               "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    "alpaca_no_input": ("Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"),
    # a plain chat-free default: the instruction (and input) as they are, then a newline
    "plain": "{instruction}\n{input}\n",
    "plain_no_input": "{instruction}\n",
}


def format_prompt(record: dict, template: str) -> str:
    """The prompt text of one record under a template.

    template "raw": no template: `prompt` verbatim (instruction records: instruction, a newline, the input).
    template "alpaca" / "plain": the TEMPLATES above, filled from instruction+input (or prompt as the instruction).
    template "auto": raw for prompt/response records, alpaca for instruction/input/output records.
    (A chat template renders the "raw" text as the user's turn: `prompt_ids`.)
    """
    instruction = record.get("instruction", record.get("prompt", ""))
    inp = record.get("input") or ""
    if template == "auto":
        template = "raw" if "prompt" in record else "alpaca"
    if template == "raw":
        return record["prompt"] if "prompt" in record else instruction + ("\n" + inp if inp else "")
    if template not in ("alpaca", "plain"):
        raise ValueError(f"unknown template {template!r}: expected auto, raw, alpaca, plain or chat")
    return TEMPLATES[template if inp else template + "_no_input"].format(instruction=instruction, input=inp)


def response_of(record: dict) -> str:
    return record["response"] if "response" in record else record["output"]


def uses_chat(template: str, tok) -> bool:
    """Whether prompts are the checkpoint's own chat template: --template chat, or auto when the tokenizer has one."""
    if template == "chat" and getattr(tok, "chat", None) is None:
        raise ValueError("--template chat: the tokenizer has no chat template (chat_template in tokenizer_config.json "
                         "or chat_template.jinja, beside a tokenizer.json)")
    return template in ("auto", "chat") and getattr(tok, "chat", None) is not None


def prompt_ids(record: dict, tok, template: str) -> list[int]:
    """BOS + the tokens of format_prompt(record, template); with a chat template, the tokens of the template's
    rendering of the record (its "raw" text) as a user turn, which writes its own BOS (exactly one)."""
    if uses_chat(template, tok):
        return tok.chat.prompt_ids(format_prompt(record, "raw"))
    return tok.encode(format_prompt(record, template), bos=True)


def tokenize_examples(records, tok, template: str = "auto", max_length: int = 512, eos_id: int | None = None
                      ) -> list[dict]:
    """Each record -> {input_ids, labels, prompt_len, record}. The prompt is tokenised on its own (with BOS), so
    prompt_len is exact and equals what generation will see; the response follows with the end token eos_id (the
    model's; default the tokenizer's). Labels are -100 on the prompt, so the loss covers response tokens + end only
    (ReFT eq. 4). Sequences longer than max_length are cut at the end (a warning counts them); an example whose prompt
    alone fills max_length is skipped (counted)."""
    out, cut, skipped = [], 0, 0
    for rec in records:
        prompt = prompt_ids(rec, tok, template)
        end = tok.eos_id if eos_id is None else eos_id
        response = tok.encode(response_of(rec), bos=False) + ([end] if end is not None else [])  # None: no end token
        ids = prompt + response
        if len(prompt) >= max_length:
            skipped += 1
            continue
        if len(ids) > max_length:
            cut, ids = cut + 1, ids[:max_length]
        out.append({"input_ids": ids, "labels": [-100] * len(prompt) + ids[len(prompt):], "prompt_len": len(prompt),
                    "record": rec})
    if cut or skipped:
        print(f"warning: {cut} example(s) truncated to max_length={max_length}, {skipped} skipped because the prompt "
              f"alone is that long", file=sys.stderr)
    if not out:
        raise ValueError(f"no usable examples: every prompt is at least max_length={max_length} tokens")
    return out


def split_heldout(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic held-out split: the last `fraction` of a seeded permutation."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = int(round(len(examples) * fraction)) if len(examples) > 1 else 0
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def collate(examples: list[dict], pad_id: int, scheme: PositionScheme | None = None, padding_side: str = "right",
            with_labels: bool = True) -> dict:
    """Pad a list of examples to the longest one (dynamic padding).

    Returns input_ids [B, T], attention_mask [B, T] (1 = real token), prompt_mask [B, T] (1 on prompt tokens),
    labels [B, T] (-100 on prompt and padding; with_labels only) and, for a ReFT method's `scheme`, positions
    [B, G, slots] (indices into the padded rows; -1 = empty slot). Training pads on the right; generation pads the
    prompts alone on the left (with_labels False) so that the next token is at the end of every row.

    Example: prompts of 3 and 5 tokens, left-padded to T = 5, scheme f1+l1 untied:
        row 0: [pad, pad, p, p, p] -> positions [[2], [4]];   row 1: [p, p, p, p, p] -> positions [[0], [4]]
    """
    seqs = [e["input_ids"] if with_labels else e["input_ids"][:e["prompt_len"]] for e in examples]
    T = max(len(s) for s in seqs)
    batch = {k: torch.full((len(seqs), T), v, dtype=torch.long)
             for k, v in (("input_ids", pad_id), ("attention_mask", 0), ("prompt_mask", 0), ("labels", -100))}
    positions = []
    for i, (e, s) in enumerate(zip(examples, seqs)):
        start = T - len(s) if padding_side == "left" else 0  # first real token of row i
        batch["input_ids"][i, start:start + len(s)] = torch.tensor(s)
        batch["attention_mask"][i, start:start + len(s)] = 1
        batch["prompt_mask"][i, start:start + e["prompt_len"]] = 1
        if with_labels:
            batch["labels"][i, start:start + len(s)] = torch.tensor(e["labels"])
        if scheme is not None:
            positions.append(scheme.of(e["prompt_len"], offset=start))  # [G, slots]
    if positions:
        batch["positions"] = torch.stack(positions)  # [B, G, slots]
    if not with_labels:
        del batch["labels"]
    return batch
