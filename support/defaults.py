"""The learning rate and schedule a run takes when it does not choose (--lr 0, --schedule auto): per task kind and
method, the recipe benchmarks/suite.py selected over 5 language-model tasks on stories260K and 2 classification tasks
on all-MiniLM-L6-v2, 3 seeds each (the best mean rank among recipes within one seed standard deviation of the best on
every task of the kind, else the best mean rank; benchmarks/README.md has the table). Every schedule warms up over
--warmup (10 %) of the steps; clipping stays at 1.0 (turning it off won no task kind)."""
from dataclasses import replace

DEFAULTS = {  # (kind, method) -> (lr, schedule after the warm-up)
    ("lm", "loreft"): (3e-2, "linear"), ("lm", "direft"): (1e-2, "constant"), ("lm", "prefix"): (3e-2, "linear"),
    ("lm", "pedro"): (1e-2, "constant"), ("lm", "lora"): (3e-3, "constant"),
    ("classify", "loreft"): (1e-2, "linear"), ("classify", "direft"): (1e-2, "linear"),
    ("classify", "prefix"): (3e-2, "linear"), ("classify", "pedro"): (1e-2, "constant"),
    ("classify", "lora"): (3e-3, "constant"),
}
# One exception to the suite's choice: LoReFT on classification keeps linear decay. The suite picked constant from its
# small SST-2 task (640 rows); on the full SST-2 run (55,517 rows, README) constant scored 0.780 against linear's 0.844.
FALLBACK = (1e-2, "linear")  # a method outside the table (none: a classification head alone)


def lr_of(kind: str, method: str) -> float:
    return DEFAULTS.get((kind, method), FALLBACK)[0]


def resolve(cfg, kind: str):
    """cfg with --lr 0 and --schedule auto replaced by the kind's and method's defaults."""
    lr, schedule = DEFAULTS.get((kind, cfg.method), FALLBACK)
    return replace(cfg, lr=cfg.lr or lr, schedule=schedule if cfg.schedule == "auto" else cfg.schedule)
