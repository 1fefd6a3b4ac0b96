"""Support: the plumbing a learner can skip. The four core files (model.py, reft.py, data.py, train.py) are the
textbook; this package holds what sits around them. The imports form a DAG with the core at the bottom
(tests/test_imports.py checks it): model.py and reft.py import nothing of the project; formats, tokenizers and
downloads import the model; the training loop (train.py) imports the pieces below it; the command line (cli.py) sits
on top and nothing imports it (train.py and model.py reach it only from their `if __name__ == "__main__":` blocks).

  untrusted.py      reading files the user did not write: weights-only loads, JSON, plain names, time limits
  files.py          atomic writes (temporary name, fsync, rename), stale temporary files, --overwrite of outputs
  flags.py          command-line flags from a config dataclass's comments, one-line flag errors
  checkpoints.py    Hugging Face / llama2.c formats, checks before allocating, rename tables, downloads, from_pretrained
  bpe.py            GPT-2's byte table, Unicode whitespace and the BPE merge loop (shared by the two BPE readers)
  hf_tokenizer.py   Hugging Face tokenizer.json (BPE: Llama 3.x, Qwen2/2.5, SmolLM2, SentencePiece exports), pure Python
  chat.py           an instruct checkpoint's own chat template (Jinja, sandboxed and bounded; jinja2 optional)
  tokenizer.py      SentencePiece, byte-level BPE (GPT-2/RoBERTa), WordPiece (BERT); load_tokenizer picks one
  records.py        reading instruction data files (.jsonl/.json) with FILE:LINE errors
  saving.py         reft.pt / checkpoint.pt, written atomically; older files upgraded on load
  runs.py           a run's folder and life: the --out lock, --resume checks, Ctrl-C/SIGTERM, NaN stops, metrics line
  distributed.py    data-parallel training under torchrun (bounded waits)
  pyreft_import.py  folders saved by pyreft (ReftModel.save)
  measure.py        tensor bytes of a training step (benchmarks/bench.py and compare.py count alike)
  classify.py       sequence classification: GLUE/CSV/TSV data, metrics, the encoder's training
  compare.py        several methods in one command (--method a,b --seeds N --lr-grid): compare.json/.md/.png
  cli.py            the command lines: python train.py (main) and python model.py (model_main)
"""
