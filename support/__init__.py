"""Support: the plumbing a learner can skip. The four core files (model.py, reft.py, data.py, train.py) are the
textbook; this package holds what they reach only at their edges, and imports them, never the other way round
(except the edges: loading a checkpoint or a tokenizer, the command-line glue, --task classify).

  checkpoints.py    Hugging Face / llama2.c formats, rename tables, downloads, the shipped stories260K
  tokenizer.py      SentencePiece, byte-level BPE (GPT-2/RoBERTa), WordPiece (BERT), pure Python
  records.py        reading instruction data files (.jsonl/.json) with FILE:LINE errors
  classify.py       sequence classification: GLUE/CSV/TSV data, the encoder's loop, metrics
  saving.py         reft.pt / checkpoint.pt, written atomically; older files upgraded on load
  pyreft_import.py  folders saved by pyreft (ReftModel.save)
  cli.py            flags, --out/--resume checks, Ctrl-C, threads, the model.py command line
"""
