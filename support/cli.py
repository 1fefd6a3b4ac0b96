"""The command lines' plumbing: flags from TrainConfig's comments, parameter counts, the model.py CLI, checks on --out
and --resume, Ctrl-C, threads. train.py and model.py call these; nothing here is needed to understand a method."""
import argparse
import inspect
import json
import os
import re
import signal
import sys
from dataclasses import asdict, fields, replace

import torch

from support.checkpoints import EMBEDDED_FILES, resolve
from support.runs import StopOnSignal, check_resume, run_info
from support.untrusted import load_torch, read_json

# -----------------------------------------------------------------------------------------------------------------
# Flags


def field_help(config_cls) -> dict:
    """{field: the comment after it} from the dataclass's source: one place documents a field, for readers and for
    --help alike."""
    out = {}
    for line in inspect.getsource(config_cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


class OneLineParser(argparse.ArgumentParser):
    """A wrong flag or value is one line ("error: argument --lr: invalid float value: 'abc'"), not the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\n")


def _parser(config_cls, only_given: bool = False) -> argparse.ArgumentParser:
    """One --flag per field; only_given: flags not on the command line are left out of the result."""
    doc = sys.modules[config_cls.__module__].__doc__ or ""
    p = OneLineParser(prog="train.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_help(config_cls)
    for f in fields(config_cls):
        flag, text = "--" + f.name.replace("_", "-"), helps.get(f.name, "")
        default = argparse.SUPPRESS if only_given else f.default
        if f.type is bool:
            p.add_argument(flag, action="store_true", help=text, **({"default": default} if only_given else {}))
        else:
            p.add_argument(flag, type=f.type, default=default, help=f"{text} (default: {f.default!r})")
    return p


def parse_args(config_cls, argv):
    """A config_cls from argv: one --flag-name per field, its comment as the help, its default shown."""
    return config_cls(**vars(_parser(config_cls).parse_args(argv)))


def given_flags(config_cls, argv) -> set:
    """The fields argv sets explicitly (a --resume takes the saved run's value for the others)."""
    return set(vars(_parser(config_cls, only_given=True).parse_known_args(argv)[0]))


def count_parameters(method: torch.nn.Module, model: torch.nn.Module) -> str:
    """'trainable params: 1,234 || base params: 260,032 || trainable%: 0.4745' (the % is over the base, as the
    ReFT paper reports it)."""
    n = sum(p.numel() for p in method.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable params: {n:,} || base params: {total:,} || trainable%: {100 * n / total:.4f}"


def tokenizer_path(model: str, tokenizer: str) -> str:
    """--tokenizer, else the model's folder; the shipped stories260K's tokenizer is tok512.model."""
    if tokenizer:
        return resolve(tokenizer)
    path = resolve(model)
    if os.path.isdir(path):
        return path
    if os.path.abspath(path) == os.path.abspath(EMBEDDED_FILES["stories260K"]):
        return EMBEDDED_FILES["tok512.model"]
    raise ValueError("a llama2.c checkpoint needs --tokenizer (e.g. tok512.model for stories260K)")


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
        from support.classify import is_classification_file
        task = "classify" if cfg.data and is_classification_file(cfg.data) else "lm"
    if task == "lm" and cfg.group_by_length:
        raise ValueError("--group-by-length groups classification steps; language-model training takes batches as "
                         "they come (drop the flag)")
    return task


def set_threads(model=None):
    """CPU threads for the command lines: REFT_THREADS if set; else OMP_NUM_THREADS's choice if set; else one thread
    for a tiny model (under 5M parameters), where per-operation overhead dominates and a busy CPU made several
    threads 3-15x slower (README, Speed on a CPU), and PyTorch's default (all cores) for anything larger."""
    if os.environ.get("REFT_THREADS"):
        torch.set_num_threads(int(os.environ["REFT_THREADS"]))
    elif not os.environ.get("OMP_NUM_THREADS") and model is not None and \
            sum(p.numel() for p in model.parameters()) < 5_000_000:
        torch.set_num_threads(1)


# -----------------------------------------------------------------------------------------------------------------
# Runs on disk: --out, --resume, --load


def check_out_folder(cfg, mcfg):
    """(the checkpoint path in --out, the method config to train, the run's info to save), after refusing what would
    lose or mix up a saved run: --resume without a checkpoint, with other settings or changed data
    (support/runs.check_resume), and --out holding a run without --resume or --overwrite. A resumed run keeps the
    position rule it was trained with, and its saved settings. With --overwrite the old files are not read at all
    (they are replaced, whatever they hold)."""
    ckpt = os.path.join(cfg.out, "checkpoint.pt")
    if cfg.resume:
        if not os.path.exists(ckpt):
            raise FileNotFoundError(f"--resume: no checkpoint.pt in {cfg.out}")
        info = check_resume(cfg, load_torch(ckpt))
        saved = saved_method_config(cfg.out)
        if saved is not None and saved != asdict(mcfg):
            diff = ", ".join(f"{k} {saved[k]!r} there, {v!r} here" for k, v in asdict(mcfg).items()
                             if saved.get(k) != v and k != "position_rule")
            if diff:
                raise ValueError(f"--resume: {cfg.out} holds a run with other settings ({diff}); pass the same "
                                 "flags, or another --out")
        return ckpt, replace(mcfg, position_rule=saved["position_rule"]) if saved else mcfg, info
    held = [n for n in ("checkpoint.pt", "reft.pt") if os.path.exists(os.path.join(cfg.out, n))]
    if held and not cfg.overwrite:
        try:
            saved = saved_method_config(cfg.out)
            what = f"a {saved['method']} run (rank {saved['rank']})" if saved else "a run"
        except ValueError:  # unreadable, or not plain data: it is not read further, and still not overwritten
            what = f"a run ({held[0]} cannot be read)"
        raise ValueError(f"{cfg.out} already holds {what}: pass --resume to continue it, --overwrite to replace it, "
                         "or another --out")
    return ckpt, mcfg, run_info(cfg)


def saved_method_config(folder: str) -> dict | None:
    """The MethodConfig (as a dict) of the run saved in folder: from checkpoint.pt, else reft.pt; None if neither.
    Both are read weights-only (support/untrusted.load_torch): a file that is not plain data is a one-line error."""
    from support.saving import upgrade_config
    for name, key in (("checkpoint.pt", "config"), ("reft.pt", "config")):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            blob = load_torch(path)
            if isinstance(blob, dict) and isinstance(blob.get(key), dict):
                try:
                    return asdict(upgrade_config(blob[key]))
                except TypeError as e:  # a key this version does not know
                    raise ValueError(f"{path}: not a run saved by this project ({e})") from None
    return None


def load_checkpoint(path, method, opt, sched, kind: str) -> tuple[int, int, int]:
    """Restore a --resume checkpoint (weights, optimizer, schedule, RNG); -> (step, epoch, batch)."""
    from support.saving import upgrade_state_dict
    ck = load_torch(path, map_location=next(method.parameters()).device)
    method.load_state_dict(upgrade_state_dict(ck["method"], kind)), opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    torch.set_rng_state(ck["rng"])
    print(f"resumed from {path} at step {ck['step']}", file=sys.stderr)
    return ck["step"], ck["epoch"], ck["batch"]


def load_pyreft_run(folder: str, model, positions: str):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--load {folder}: no such folder (a train.py --out folder or a pyreft save)")
    if not positions:
        raise ValueError("a pyreft folder does not store positions: pass the --positions it was trained with "
                         "(e.g. --positions f1+l1)")
    from support.pyreft_import import load_pyreft
    return load_pyreft(folder, model, positions)


def read_prompts(cfg) -> list[str]:
    if not cfg.prompts_file:
        return [cfg.prompt]
    with open(cfg.prompts_file, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f if line.strip()]
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


StopOnCtrlC = StopOnSignal  # the earlier name (Ctrl-C alone)


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
    import model as M
    from support.tokenizer import load_tokenizer

    p = OneLineParser(prog="model.py", description="Load a checkpoint and print the continuation of a prompt.")
    p.add_argument("checkpoint", help="HF folder, llama2.c .bin/.pt, or a public name such as stories260K")
    p.add_argument("--tokenizer", default="", help="tokenizer file or folder (default: the checkpoint's folder)")
    p.add_argument("--prompt", default="", help="text to continue; empty = start from BOS")
    p.add_argument("--chat", action="store_true", help="the prompt as a user turn in the checkpoint's chat template "
                   "(tokenizer_config.json); prints the assistant's reply alone")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        model = M.from_pretrained(args.checkpoint, device=args.device)
        set_threads(model)
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
