"""The command lines, on top of everything else (nothing in the project imports this file):

  python train.py [flags]            main: train, compare (support/compare.py), classify (support/classify.py), or
                                     generate with a saved run (--load); no arguments run the quick start
  python model.py CKPT --prompt ...  model_main: load a checkpoint and print a continuation

train.py and model.py call into here only from their `if __name__ == "__main__":` blocks."""
import os
import sys
from dataclasses import replace

import torch

import data
import model as M
import train
from support import classify, compare, defaults, runs, saving
from support.checkpoints import from_pretrained, resolve, tokenizer_path
from support.flags import OneLineParser, given_flags
from support.pyreft_import import load_pyreft_run
from support.records import read_text
from support.tokenizer import load_tokenizer
from support.untrusted import load_torch, read_json

# `python train.py` with no arguments: the quick start on the model that ships with the project
QUICKSTART = ["--model", "stories260K", "--data", "examples/steer_train.jsonl", "--eval-data",
              "examples/steer_eval.jsonl", "--method", "loreft", "--out", "runs/steer"]


def quick_start(argv: list[str]) -> tuple[list[str], bool]:
    """(argv, whether it is the quick start). With neither --data nor --load, the quick start: flags not given take
    its values, and --out is runs/steer for LoReFT (runs/steer_<method> for the others, so that
    `python train.py --method direft` leaves LoReFT's run)."""
    given = given_flags(train.TrainConfig, argv)
    if given & {"data", "load"}:
        return argv, False
    method = train.parse_args(argv).method
    values = dict(zip(QUICKSTART[::2], QUICKSTART[1::2])) | {
        "--out": "runs/steer" if method == "loreft" else f"runs/steer_{method.replace(',', '_')}"}
    added = [x for flag, value in values.items() if flag[2:].replace("-", "_") not in given for x in (flag, value)]
    print(f"the quick start: python train.py {' '.join(added + argv)}", file=sys.stderr)
    return added + argv, True


def same_quick_start(cfg) -> bool:
    """Whether cfg.out holds a finished quick-start run with exactly these settings (running the quick start again
    then replaces it without an error; any other run there stays protected)."""
    path = os.path.join(cfg.out, "reft.pt")
    if not os.path.exists(path):
        return False
    try:
        saved = (load_torch(path).get("train_config") or {})
    except (ValueError, AttributeError):
        return False
    now = vars(train.parse_args([])) | vars(cfg) | vars(defaults.resolve(cfg, "lm"))
    ignore = ("resume", "overwrite", "device", "dist_timeout")
    return {k: v for k, v in saved.items() if k not in ignore} == {k: v for k, v in now.items() if k not in ignore}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    argv, quick = quick_start(argv)
    cfg = train.parse_args(argv)
    try:
        if quick and not cfg.resume and same_quick_start(cfg):  # the quick start again: replace its own run
            cfg = replace(cfg, overwrite=True)
        cfg = runs.with_saved_settings(cfg, given_flags(train.TrainConfig, argv))  # --resume: the saved run's flags
        task, result = task_of(cfg), {}
        with runs.exclusive(cfg.out if cfg.data else ""):  # one run per --out at a time
            if compare.is_comparison(cfg):  # several methods, seeds or learning rates: support/compare.py
                compare.compare(cfg, task)
            elif cfg.method == "none" and task == "lm" and not cfg.load:  # the frozen model, evaluated (the floor)
                result = compare.frozen_model_run(cfg)
                print(runs.metrics_line({k: v for k, v in result.items() if k != "curve"}))
            elif task == "classify":  # the encoder's loop, metrics and data formats: support/classify.py
                result = classify.evaluate_saved_classifier(cfg) if cfg.load else classify.train_classifier(cfg)
            elif cfg.load:
                generate_with_saved(cfg)
            elif cfg.data:
                result = train.train(cfg)
            else:
                raise ValueError("nothing to do: pass --data FILE to train, or --load DIR --prompt TEXT to generate")
    except (ValueError, OSError, ImportError) as e:  # bad input, or jinja2 missing: one clear line
        sys.exit(f"error: {e}")
    if (result or {}).get("stopped") in runs.EXIT_CODES:  # stopped by Ctrl-C: exit 130, by SIGTERM: 143
        sys.exit(runs.EXIT_CODES[result["stopped"]])


def generate_with_saved(cfg: train.TrainConfig):
    """--load RUN --prompt TEXT (or --prompts-file FILE): continuations with a saved method."""
    model, tok = train.load_model_and_tokenizer(cfg)
    if os.path.exists(os.path.join(cfg.load, "reft.pt")):
        method, mcfg, blob = saving.load(cfg.load, model)
        template = blob.get("train_config", {}).get("template", cfg.template)
    else:  # a pyreft folder: positions are not saved there, so they come from --positions
        method, mcfg = load_pyreft_run(cfg.load, model, cfg.positions)
        template = cfg.template
    method.eval()
    prompts = read_prompts(cfg)
    examples = []
    for text in prompts:
        ids = data.prompt_ids({"prompt": text}, tok, template)
        examples.append({"input_ids": ids, "prompt_len": len(ids)})
    new = new_tokens_within(cfg, max(len(e["input_ids"]) for e in examples))  # --max-length caps prompt + new
    outs = train.generate_ids(model, tok, method, mcfg, examples, new, cfg.device, template)
    whole = not (cfg.prompts_file or data.uses_chat(template, tok))  # a chat's reply is not a continuation of its text
    for text, e, ids in zip(prompts, examples, outs):  # decode prompt + continuation together: exact spacing
        print(tok.decode(e["input_ids"] + ids) if whole else f"{text}\t{tok.decode(ids)}")


def task_of(cfg) -> str:
    """--task, or inferred: classify for classification data (.csv/.tsv, labelled .jsonl), or for --load with
    --eval-data and no prompt."""
    if cfg.task not in ("auto", "lm", "classify"):
        raise ValueError(f"unknown --task {cfg.task!r}: expected lm, classify or auto")
    if cfg.task != "auto":
        task = cfg.task
    elif cfg.load:
        task = "classify" if cfg.eval_data and not (cfg.prompt or cfg.prompts_file) else "lm"
    else:
        task = "classify" if cfg.data and classify.is_classification_file(cfg.data) else "lm"
    if task == "lm" and cfg.group_by_length:
        raise ValueError("--group-by-length groups classification steps; language-model training takes batches as "
                         "they come (drop the flag)")
    return task


def read_prompts(cfg) -> list[str]:
    if not cfg.prompts_file:
        return [cfg.prompt]
    prompts = [line for line in read_text(cfg.prompts_file).split("\n") if line.strip()]
    if not prompts:
        raise ValueError(f"{cfg.prompts_file}: no prompts (one per line)")
    return prompts


def new_tokens_within(cfg, longest_prompt: int) -> int:
    """--max-new-tokens, cut so that prompt + new tokens fit --max-length (a note says so when it cuts)."""
    room = cfg.max_length - longest_prompt
    if room <= 0:
        raise ValueError(f"a prompt of {longest_prompt} tokens leaves no room within --max-length {cfg.max_length}")
    if room < cfg.max_new_tokens:
        print(f"note: {room} new tokens, not {cfg.max_new_tokens}: --max-length {cfg.max_length} caps prompt "
              f"({longest_prompt} tokens) + new tokens", file=sys.stderr)
    return min(room, cfg.max_new_tokens)


# -----------------------------------------------------------------------------------------------------------------
# python model.py CHECKPOINT [--tokenizer FILE] --prompt TEXT [--chat] --max-new-tokens N [--temperature T --top-p P]


def generation_eos(checkpoint: str, model) -> list[int]:
    """The ids generation stops at: generation_config.json's eos_token_id in a HF folder (what transformers' generate
    stops at; Llama-3.2-Instruct lists <|end_of_text|>, <|eom_id|> and <|eot_id|>), else config.json's."""
    path = os.path.join(resolve(checkpoint), "generation_config.json")
    eos = read_json(path).get("eos_token_id") if os.path.isfile(path) else None
    eos = model.config.eos_token_id if eos is None else eos
    return [eos] if isinstance(eos, int) else list(eos or [])


def model_main(argv=None):
    p = OneLineParser(prog="model.py", description="Load a checkpoint and print the continuation of a prompt.")
    p.add_argument("checkpoint", help="HF folder, llama2.c .bin/.pt, or a public name such as stories260K")
    p.add_argument("--tokenizer", default="", help="tokenizer file or folder (default: the checkpoint's folder)")
    p.add_argument("--prompt", default="", help="text to continue; empty = start from BOS")
    p.add_argument("--chat", action="store_true", help="the prompt as a user turn in the checkpoint's chat template "
                   "(chat_template.jinja, else tokenizer_config.json's chat_template); prints the assistant's reply "
                   "alone")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        model = from_pretrained(args.checkpoint, device=args.device)
        runs.set_threads(model)
        if not isinstance(model, M.Llama):
            raise ValueError(f"{args.checkpoint} is an encoder ({model.config.model_type}); it cannot generate text")
        tok = load_tokenizer(tokenizer_path(args.checkpoint, args.tokenizer))
        eos = generation_eos(args.checkpoint, model)
        if args.chat:
            if getattr(tok, "chat", None) is None:
                raise ValueError("--chat: the tokenizer has no chat template (chat_template in "
                                 "tokenizer_config.json or chat_template.jinja, beside a tokenizer.json)")
            prompt, eos = tok.chat.prompt_ids(args.prompt), [tok.chat.end_id] + eos
        else:  # raw text, as a base model continues it
            prompt = tok.encode(args.prompt, bos=True)
        if not prompt:
            raise ValueError("an empty --prompt needs a BOS token to start from, and this tokenizer adds none")
        ids = torch.tensor([prompt], device=args.device)
        g = torch.Generator(device=args.device).manual_seed(args.seed)
        out = M.generate(model, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, eos_id=eos, generator=g)[0].tolist()
        print(tok.decode(out) if args.chat else tok.decode(prompt + out))  # together: the tokenizer's spacing
    except (ValueError, OSError, ImportError) as e:  # bad input, no network, no jinja2: one clear line
        sys.exit(f"error: {e}")
