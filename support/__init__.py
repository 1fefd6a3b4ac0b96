"""Support: the plumbing a learner can skip. The four core files (model.py, reft.py, data.py, train.py) are the
textbook; this package holds what they reach only at their edges, and imports them, never the other way round
(except the edges: loading a checkpoint or a tokenizer, the command-line glue, --task classify, comparisons).

  checkpoints.py    Hugging Face / llama2.c formats, rename tables, downloads (HF_TOKEN), the shipped stories260K
  tokenizer.py      SentencePiece, byte-level BPE (GPT-2/RoBERTa), WordPiece (BERT), pure Python; load_tokenizer
  hf_tokenizer.py   Hugging Face tokenizer.json (BPE: Llama 3.x, Qwen2/2.5, SmolLM2, SentencePiece exports), pure Python
  chat.py           an instruct checkpoint's own chat template (Jinja, sandboxed; jinja2 optional), its end of turn
  records.py        reading instruction data files (.jsonl/.json) with FILE:LINE errors
  classify.py       sequence classification: GLUE/CSV/TSV data, the encoder's loop, metrics
  saving.py         reft.pt / checkpoint.pt, written atomically; older files upgraded on load
  pyreft_import.py  folders saved by pyreft (ReftModel.save)
  cli.py            flags, parameter counts, --out/--resume checks, Ctrl-C, threads, the model.py command line
  compare.py        several methods in one command (--method a,b --seeds N --lr-grid): compare.json/.md/.png
  measure.py        tensor bytes of a training step (benchmarks/bench.py and compare.py count alike)
"""
