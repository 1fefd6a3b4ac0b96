"""End-to-end wall time of the README quick start (LoReFT, stories260K, examples/steer_*.jsonl): our train.py against
pyreft 0.1.0 (+ pyvene 0.1.8, transformers' Trainer) doing the same job on the same weights, tokens and settings.

  python benchmarks/e2e.py --threads 1 --repeats 2 --json e2e.json
  python benchmarks/e2e.py --epochs 1 --max-examples 40          # a quick check while developing

What is timed (time.perf_counter, torch.set_num_threads(--threads) for both; each side --repeats times, median):
  ours    train.train(TrainConfig(...)) exactly as `python train.py ... --method loreft --out DIR` runs it: load the
          .bin and tokenizer, tokenise, train (all 5 layers, f3+l3 untied, rank 8, AdamW lr 1e-2, 10 epochs, batch 8,
          warm-up 0.1 then linear decay, clip 1.0), save (a checkpoint per epoch + reft.pt), eval loss, greedy
          generation (32 new tokens, left-padded batches of 32) on the 50 eval prompts, and 3 frozen-model samples.
  pyreft  (untimed: our model -> transformers' LlamaForCausalLM, logits checked to 1e-4) then, timed: the HF
          tokenizer (used for padding only), the examples (our data.py tokens, so identical ids; BOS + prompt,
          response + end token 1), pyreft.get_intervention_locations(first_n 3, last_n 3, 10 interventions, untied,
          pad_mode "first") with the sink pad token prepended and locations +1 as pyreft's paper datasets
          (examples/loreft/dataset.py: n = the full prompt length), get_reft_model with 10 LoreftInterventions at
          "block_output" (first 5 = prefix group), ReftTrainerForCausalLM with ReftDataCollator(DataCollatorForSeq2Seq
          padding "longest"), no saving, then ReftModel.generate(intervene_on_prompt=True) on left-padded batches of
          32 with locations shifted as examples/loreft/compute_metrics.py does, and exact match against references.
          (make_multiple_position_supervised_data_module is not used: it tokenises text itself with the HF tokenizer
          and appends the tokenizer's EOS "</s>" (id 2), not the llama2.c end token 1, so tokens would differ.)
Both sides run once untimed first (1 epoch, 8 records: first-call costs), then alternate, the first side swapping
each repeat, so drift of a shared CPU hits both. Library imports and the weight conversion are outside the timing.
Workarounds for transformers 5 (each marked WORKAROUND below): warmup_ratio is gone (warmup_steps=0.1 is a ratio);
Trainer.compute_loss gets num_items_in_batch, which pyreft's signature lacks; LlamaTokenizer(vocab_file=...) yields a
3-token vocabulary, from_pretrained on a folder with tokenizer.model works.
Not the same work or trajectory: ours also writes 11 small files, computes the eval loss and 3 base generations; the
Trainer's batches come in another random order, its warm-up starts at lr 0 (ours at lr/(warm+1)), it uses fused AdamW
(ours foreach) and every sequence carries the sink token, so losses and exact match differ by training noise.
"""
import argparse
import contextlib
import copy
import io
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model as M  # noqa: E402
import train  # noqa: E402
from data import response_of, tokenize_examples  # noqa: E402
from support.records import read_records  # noqa: E402
from support.tokenizer import load_tokenizer  # noqa: E402
from support.checkpoints import from_pretrained  # noqa: E402
from support import runs  # noqa: E402

FIRST, LAST = 3, 3  # f3+l3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = os.path.join(ROOT, "assets", "stories260K")  # ships with the project
    p.add_argument("--model", default=os.path.join(a, "stories260K.bin"))
    p.add_argument("--tokenizer", default=os.path.join(a, "tok512.model"))
    p.add_argument("--data", default=os.path.join(ROOT, "examples", "steer_train.jsonl"))
    p.add_argument("--eval-data", default=os.path.join(ROOT, "examples", "steer_eval.jsonl"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-examples", type=int, default=0, help="first N train and eval records (0 = all; for checks)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default="", help="write the results here")
    return p.parse_args(argv)


def subset(path, n, folder):
    """The first n records of a .jsonl file, as a file of the same name in folder (n = 0: the file itself)."""
    if not n:
        return path
    out = os.path.join(folder, os.path.basename(path))
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in read_records(path)[:n])
    return out


def hf_llama(model):
    """transformers' LlamaForCausalLM with our loaded model's config and weights (ours already uses HF names and the
    half-split rotary layout), frozen, end token 1 and pad 0 as llama2.c models; logits must match to 1e-4."""
    import transformers
    c = model.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=1, eos_token_id=1, pad_token_id=0))
    state = {(k if k == "lm_head.weight" else "model." + k): v.clone() for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # absent when tied
    hf.eval().requires_grad_(False)
    hf.generation_config.eos_token_id, hf.generation_config.pad_token_id = 1, 0
    ids = torch.randint(3, c.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = float((model(ids) - hf(input_ids=ids).logits).abs().max())
    assert err < 1e-4, f"transformers' Llama differs from ours by {err:.2e}"
    return hf, err


def run_ours(args, data, eval_data, folder):
    cfg = train.TrainConfig(model=args.model, tokenizer=args.tokenizer, data=data, eval_data=eval_data,
                            method="loreft", epochs=args.epochs, out=os.path.join(folder, "ours"), device="cpu",
                            overwrite=True)  # each repeat replaces the last one's run
    log = io.StringIO()  # progress lines: the last one gives the steps and the final step's loss
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(io.StringIO()):
        result = train.train(cfg)
    wall = time.perf_counter() - t0
    step, total, loss = re.findall(r"step (\d+)/(\d+) \| loss ([\d.]+)", log.getvalue())[-1]
    return {"wall_s": wall, "steps": int(step), "final_train_loss": float(loss),
            "exact_match": result["exact_match"], "n_eval": result["n"]}


def pyreft_examples(examples, hf_tok, num_layers, with_labels):
    """pyreft's paper-dataset layout: one sink pad token first (label -100), locations from get_intervention_locations
    (n = full prompt length, pad_mode "first") + 1, attention_mask = input_ids != pad."""
    import pyreft
    out = []
    for i, e in enumerate(examples):
        n = e["prompt_len"]
        ids = torch.tensor([hf_tok.pad_token_id] + (e["input_ids"] if with_labels else e["input_ids"][:n]))
        locs = pyreft.get_intervention_locations(last_position=n, first_n=FIRST, last_n=LAST, pad_mode="first",
                                                 num_interventions=2 * num_layers, share_weights=False)
        item = {"input_ids": ids, "attention_mask": (ids != hf_tok.pad_token_id).int(),
                "intervention_locations": (torch.IntTensor(locs) + 1).tolist(), "id": i}
        if with_labels:
            item["labels"] = torch.tensor([-100] + e["labels"])
        out.append(item)
    return out


def run_pyreft(args, hf, tok_dir, data, eval_data, folder):
    import pyreft
    import transformers

    class Trainer(pyreft.ReftTrainerForCausalLM):
        # WORKAROUND (transformers 5): Trainer.training_step calls compute_loss(model, inputs, num_items_in_batch=..);
        # pyreft 0.1.0's compute_loss has no such argument. Dropping it keeps pyreft's loss (the model's mean over
        # response tokens). Also keeps the last step's loss for the table (a detached tensor, no sync).
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs)
            self.last_loss = (out[0] if return_outputs else out).detach()
            return out

    torch.manual_seed(0)
    t0 = time.perf_counter()
    hf_tok = transformers.LlamaTokenizer.from_pretrained(tok_dir)  # what a user loads; here it only pads
    hf_tok.pad_token = hf_tok.convert_ids_to_tokens(0)
    tok = load_tokenizer(args.tokenizer)  # tokens: our data.py, so the ids equal ours exactly
    train_ex = tokenize_examples(read_records(data), tok, "auto", 256, 1)
    eval_ex = tokenize_examples(read_records(eval_data), tok, "auto", 256, 1)
    layers = range(hf.config.num_hidden_layers)
    train_ds = pyreft_examples(train_ex, hf_tok, len(layers), True)
    for item in train_ds:
        item.pop("id")
    reft_model = pyreft.get_reft_model(hf, pyreft.ReftConfig(representations=[
        {"layer": layer, "component": "block_output", "low_rank_dimension": 8,
         "intervention": pyreft.LoreftIntervention(embed_dim=hf.config.hidden_size, low_rank_dimension=8,
                                                   dtype=torch.float32)}
        for _ in range(2) for layer in layers]))  # first half: the f3 group, second half: the l3 group
    reft_model.set_device("cpu")
    hf_tok.padding_side = "right"
    targs = transformers.TrainingArguments(
        output_dir=os.path.join(folder, "pyreft"), per_device_train_batch_size=8, num_train_epochs=args.epochs,
        learning_rate=1e-2, lr_scheduler_type="linear",
        warmup_steps=0.1,  # WORKAROUND (transformers 5): warmup_ratio was removed; a float < 1 is the ratio now
        weight_decay=0.0, max_grad_norm=1.0, report_to="none", save_strategy="no", use_cpu=True, seed=0,
        logging_steps=10, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=reft_model, args=targs, train_dataset=train_ds,
                      data_collator=pyreft.ReftDataCollator(transformers.DataCollatorForSeq2Seq(
                          tokenizer=hf_tok, model=hf, label_pad_token_id=-100, padding="longest")))
    t_train = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # as ours: quiet
        trainer.train()
    t_eval = time.perf_counter()
    # evaluation as examples/loreft/compute_metrics.py: left padding, locations shifted by (BOS index - 1)
    reft_model.eval()
    hf_tok.padding_side = "left"
    collate = pyreft.ReftDataCollator(transformers.DataCollatorForSeq2Seq(tokenizer=hf_tok, model=hf,
                                                                          label_pad_token_id=-100, padding="longest"))
    eval_ds, correct, preds = pyreft_examples(eval_ex, hf_tok, len(layers), False), 0, []
    for i in range(0, len(eval_ds), 32):
        b = collate(eval_ds[i:i + 32])
        locs = b["intervention_locations"].permute(1, 0, 2)
        bos_at = (b["input_ids"] == 1).nonzero(as_tuple=True)[1]  # one BOS per row
        locs = (locs + bos_at.reshape(1, -1, 1) - 1).tolist()
        with torch.no_grad():
            _, out = reft_model.generate({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]},
                                         unit_locations={"sources->base": (None, locs)}, intervene_on_prompt=True,
                                         max_new_tokens=32, do_sample=False, eos_token_id=1, pad_token_id=0)
        for j, row in zip(b["id"].tolist(), out[:, b["input_ids"].shape[1]:].tolist()):
            pred = tok.decode(row[:row.index(1)] if 1 in row else row)
            preds.append(pred)
            correct += pred.strip() == response_of(eval_ex[j]["record"]).strip()
    wall = time.perf_counter() - t0
    assert torch.get_num_threads() == args.threads, "the Trainer changed torch's thread count"
    return {"wall_s": wall, "setup_s": t_train - t0, "train_s": t_eval - t_train, "eval_s": wall - (t_eval - t0),
            "steps": trainer.state.global_step, "final_train_loss": float(trainer.last_loss),
            "exact_match": correct / len(eval_ds), "n_eval": len(eval_ds), "first_preds": preds[:3]}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import pyreft  # noqa: F401  (imports outside the timing: both sides start with their libraries loaded)
    folder = tempfile.mkdtemp(prefix="e2e_")
    try:
        data, eval_data = (subset(f, args.max_examples, folder) for f in (args.data, args.eval_data))
        hf, err = hf_llama(from_pretrained(args.model))
        tok_dir = os.path.join(folder, "tok")  # WORKAROUND: LlamaTokenizer reads a folder's tokenizer.model
        os.makedirs(tok_dir)
        shutil.copy(args.tokenizer, os.path.join(tok_dir, "tokenizer.model"))
        sides = {"ours": lambda a, d, e: run_ours(a, d, e, folder),
                 "pyreft": lambda a, d, e: run_pyreft(a, copy.deepcopy(hf), tok_dir, d, e, folder)}
        warm = os.path.join(folder, "warm")  # untimed warm-up of both (first-call costs): 1 epoch on 8 records
        os.makedirs(warm)
        for run in sides.values():
            run(argparse.Namespace(**{**vars(args), "epochs": 1}), *(subset(f, 8, warm) for f in (data, eval_data)))
        runs = {side: [] for side in sides}
        for r in range(args.repeats):  # interleaved, the first side alternating: drift of a shared CPU hits both
            for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                runs[side].append(sides[side](args, data, eval_data))
                print(f"repeat {r + 1}/{args.repeats} {side}: {runs[side][-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary = {side: {"wall_s_median": statistics.median(x["wall_s"] for x in rs), "runs": rs}
               for side, rs in runs.items()}
    print(f"threads {args.threads}, repeats {args.repeats}, epochs {args.epochs}; transformers vs our logits: "
          f"max |diff| {err:.1e}")
    print(f"{'':8} {'wall s (median)':>16} {'steps':>6} {'final loss':>11} {'exact match':>12}")
    for side, s in summary.items():
        last = s["runs"][-1]
        print(f"{side:8} {s['wall_s_median']:16.2f} {last['steps']:6d} {last['final_train_loss']:11.4f} "
              f"{last['exact_match']:12.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "logit_max_abs_diff": err, **summary}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
