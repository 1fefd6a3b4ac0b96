"""Loading what a run trains on: the frozen base model and its tokenizer, and the token that ends a response.
train.py uses these (and re-exports them: train.load_model_and_tokenizer, train.end_token)."""
import sys

import torch

from data import uses_chat
from support.checkpoints import from_pretrained, tokenizer_path
from support.runs import set_threads
from support.tokenizer import load_tokenizer


def load_model_and_tokenizer(cfg):
    """The frozen base model (bf16 on CUDA, fp32 on the CPU) and its tokenizer, as --model/--tokenizer name them."""
    dtype = torch.bfloat16 if cfg.device.startswith("cuda") else torch.float32
    model = from_pretrained(cfg.model, dtype=dtype, device=cfg.device)
    model.requires_grad_(False)  # the base stays frozen: only the method trains
    set_threads(model)  # one CPU thread for tiny models (REFT_THREADS overrides)
    return model, load_tokenizer(tokenizer_path(cfg.model, cfg.tokenizer))


def end_token(model, tok, template: str = "auto") -> int | None:
    """The token that ends a response: a chat template's end of turn (<|eot_id|>, <|im_end|>; not eos_token_id[0],
    <|end_of_text|> in Llama-3.2-Instruct), else the model's end-of-sequence id (llama2.c models end stories with BOS),
    else the tokenizer's; None (responses unterminated) if there is none."""
    if uses_chat(template, tok):
        return tok.chat.end_id
    eos = getattr(model.config, "eos_token_id", None)
    end = (eos[0] if isinstance(eos, list) else eos) if eos is not None else tok.eos_id
    if end is None:
        print("warning: no end token (config.json eos_token_id, tokenizer_config.json eos_token): responses are not "
              "terminated and generation runs to --max-new-tokens", file=sys.stderr)
    return end
