"""Reading instruction data files: .jsonl (one record per line) or .json (a list), records {"prompt", "response"}
or Alpaca-style {"instruction", "input", "output"}. Bad records stop with `FILE:LINE: what is wrong`: a file that is
not UTF-8 text, invalid or too deeply nested JSON, a field that is not a string or holds a lone surrogate. A UTF-8
BOM (Windows Notepad writes one) is accepted."""
import json
import os


def read_text(path: str) -> str:
    """The whole text of a data file: a regular file (not /dev/zero, a folder or a pipe) of UTF-8 text."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a regular file (data files are .jsonl, .json, .csv or .tsv text)")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") \
            from None


def check_text(value, where: str, key: str) -> str:
    """value, if it is a string of real text: a lone surrogate ("\\ud800" in JSON) cannot be encoded or tokenized."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: field {key!r} holds a lone surrogate ({value[e.start]!r}), which is not text") \
            from None
    return value


def parse_json_line(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply") from None


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
        check_text(rec[key], where, key)
        if key != "input" and not rec[key].strip():
            raise ValueError(f"{where}: field {key!r} is empty")
    return rec


def read_jsonl(path: str) -> list[tuple[object, str]]:
    """(record, "file:line") for every non-blank line of a .jsonl file; invalid JSON is an error naming the line."""
    records = []
    for n, line in enumerate(read_text(path).split("\n"), 1):  # lines end at \n only (not U+2028, as splitlines)
        if line.strip():
            records.append((parse_json_line(line, f"{path}:{n}"), f"{path}:{n}"))
    return records


def read_records(path: str) -> list[dict]:
    """Records from a .jsonl file (one object per line, blank lines skipped) or a .json file (a list of objects).
    Errors name the file and line (or record index)."""
    if path.endswith(".jsonl"):
        records = read_jsonl(path)
    else:
        text = read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise ValueError(f"{path}: JSON nested too deeply") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records (or use .jsonl, one record per line)")
        records = [(rec, f"{path}: record {i}") for i, rec in enumerate(data)]
    if not records:
        raise ValueError(f"{path}: no records")
    return [check_record(rec, where) for rec, where in records]
