"""Reading instruction data files: .jsonl (one record per line) or .json (a list), records {"prompt", "response"}
or Alpaca-style {"instruction", "input", "output"}. Bad records stop with `FILE:LINE: what is wrong`."""
import json
import os


def check_record(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "prompt" in rec or "response" in rec:
        need = ("prompt", "response")
    elif "instruction" in rec or "output" in rec:
        need = ("instruction", "output")
    else:
        raise ValueError(f"{where}: no prompt/response or instruction/output fields (has: {', '.join(rec) or 'none'})")
    for key in need + (("input",) if "input" in rec else ()):
        if key not in rec:
            raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(rec[key], str):
            raise ValueError(f"{where}: field {key!r} must be a string, got {type(rec[key]).__name__}")
        if key != "input" and not rec[key].strip():
            raise ValueError(f"{where}: field {key!r} is empty")
    return rec


def read_jsonl(path: str) -> list[tuple[object, str]]:
    """(record, "file:line") for every non-blank line of a .jsonl file; invalid JSON is an error naming the line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):  # file lines end at \n only (str.splitlines would also split at U+2028)
            if line.strip():
                try:
                    records.append((json.loads(line), f"{path}:{n}"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return records


def read_records(path: str) -> list[dict]:
    """Records from a .jsonl file (one object per line, blank lines skipped) or a .json file (a list of objects).
    Errors name the file and line (or record index)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.endswith(".jsonl"):
        records = read_jsonl(path)
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records (or use .jsonl, one record per line)")
        records = [(rec, f"{path}: record {i}") for i, rec in enumerate(data)]
    if not records:
        raise ValueError(f"{path}: no records")
    return [check_record(rec, where) for rec, where in records]
