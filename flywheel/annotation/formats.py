"""What a delivery file is, checked before its rows are: the columns a delivery has, its bytes
against what its name says (gzip, Parquet, a zip, UTF-16, one JSON document, JSON Lines, CSV),
and the columns every row needs. Each refusal is one DataError naming the fix, raised while the
file is read, before ingest writes anything (docs/ingest-reasons.md lists them)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib

from flywheel.errors import DataError

COLUMNS = (
    "prompt_id", "prompt", "response_a", "response_b", "sample_id_a", "sample_id_b", "chosen",
    "strength", "criterion", "safety_label", "annotator", "source", "split", "comment",
    "seconds", "reject_reason",
)
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
# id-like columns, where a whole number stands for its digits (a vendor's numeric ids)
IDS = ("prompt_id", "sample_id_a", "sample_id_b", "annotator")
# number columns, where any number stands for itself (read as text; validation checks its range)
NUMBERS = ("seconds",)
# columns every row needs, each as its alternatives (the prompt may come from sample_id_a)
REQUIRED = (("prompt_id", "prompt", "sample_id_a"), ("response_a", "sample_id_a"),
            ("response_b", "sample_id_b"), ("chosen",), ("criterion",), ("annotator",))
NAMES = {"jsonl": "JSON Lines", "csv": "CSV", "parquet": "Parquet"}
RENAME = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}

GZIP, PARQUET, ZIP = b"\x1f\x8b", b"PAR1", b"PK\x03\x04"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
JSON_WS = " \t\r\n"  # whitespace between JSON tokens; other characters make a line not JSON


def format_of(filename: str) -> tuple[str, bool]:
    """("jsonl" | "csv" | "parquet", gzip-compressed) from the file's name."""
    name = filename.lower()
    gz = name.endswith(".gz")
    name = name.removesuffix(".gz")
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return ("jsonl" if suffix in (".jsonl", ".ndjson", ".json") else suffix[1:]), gz
    raise DataError(
        f"{filename}: cannot tell the file format; name the file with one of "
        f"{', '.join(SUFFIXES)} (optionally + .gz)"
    )


def unwrap(data: bytes, filename: str, fmt: str, gz: bool) -> bytes:
    """The bytes to parse: decompressed when the name ends in .gz, without a UTF-8 byte order
    mark. Refuses a file whose bytes are not what its name says."""
    if gz:
        if not data.startswith(GZIP):
            raise DataError(f"{filename}: named .gz but not gzip-compressed; remove the .gz "
                            "from the name")
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{filename}: a damaged gzip file ({err}); compress the delivery "
                            "again, or deliver it uncompressed") from None
    elif data.startswith(GZIP):
        raise DataError(f"{filename}: gzip-compressed but not named .gz; rename it to "
                        f"{filename}.gz")
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    kind = sniff(data)
    if kind == fmt or (kind is None and fmt != "parquet"):
        return data
    if kind == "gzip":
        raise DataError(f"{filename}: compressed twice with gzip; decompress it once")
    if kind == "zip":
        raise DataError(f"{filename}: a zip archive (an .xlsx workbook is one), not "
                        f"{NAMES[fmt]}; unzip it, or export the sheet as CSV")
    if kind == "utf16":
        raise DataError(f"{filename}: UTF-16 text; re-export it as UTF-8")
    if kind == "json-array":
        raise DataError(f"{filename}: one JSON array, not JSON Lines; write one object per line "
                        "(e.g. `jq -c '.[]' in.json > out.jsonl`) and name it .jsonl")
    if kind == "json-document":
        raise DataError(f"{filename}: one JSON document over several lines, not JSON Lines; "
                        "write each row as one object on one line (e.g. `jq -c`), named .jsonl")
    if fmt == "parquet" and kind not in RENAME:
        raise DataError(f"{filename}: not a Parquet file (it does not start with PAR1); "
                        "export it again as Parquet")
    raise DataError(f"{filename}: looks like {NAMES[kind]}, not {NAMES[fmt]}; rename it to "
                    f"{_stem(filename)}{RENAME[kind]}{'.gz' if gz else ''}")


def _stem(filename: str) -> str:
    name = filename.removesuffix(".gz").removesuffix(".GZ")
    return name.rsplit(".", 1)[0] if "." in name else name


def sniff(data: bytes) -> str | None:
    """What the bytes look like: gzip, parquet, zip, utf16, json-array, json-document, jsonl,
    csv; None when nothing sure can be said (the named format is then tried)."""
    if data.startswith(GZIP):
        return "gzip"
    if data.startswith(PARQUET):
        return "parquet"
    if data.startswith(ZIP):
        return "zip"
    head = data[:65536]
    if head.startswith(UTF16_BOMS) or max(head[::2].count(0), head[1::2].count(0)) > len(head) // 4:
        return "utf16"
    text = head.decode("utf-8", "replace")
    first = next((line.strip(JSON_WS) for line in text.split("\n") if line.strip(JSON_WS)), "")
    if first.startswith("["):
        return "json-array" if _json_array(data, first) else None
    if first == "{":
        return "json-document"
    if first.startswith("{"):
        return "jsonl"
    if _csv_header(first):
        return "csv"
    return None


def _json_array(data: bytes, first: str) -> bool:
    """Whether a file whose first line opens with '[' is a JSON array: the whole file parses as
    one, or its first line is not JSON by itself (an array over several lines). A JSON Lines
    file whose first row is some other line is left to be read, that row malformed."""
    for text, whole in ((first, False), (data.decode("utf-8", "replace"), True)):
        try:
            value = json.loads(text)
        except RecursionError:
            return False  # nested too deep to tell: the row is malformed
        except ValueError:
            if not whole:
                return True
            continue
        if whole:
            return isinstance(value, list)
    return False


def _csv_header(line: str) -> bool:
    """A line that is a CSV header naming at least two delivery columns."""
    try:
        cells = next(csv.reader(io.StringIO(line)), [])
    except csv.Error:
        return False
    return len(cells) >= 2 and sum(c.strip() in COLUMNS for c in cells) >= 2


def check_unique(names: list[str], filename: str) -> None:
    """Refuses a file naming a delivery column twice: which of the two is meant cannot be told."""
    twice = sorted({n for n in names if n in COLUMNS and names.count(n) > 1})
    if twice:
        raise DataError(f"{filename}: the header names column {', '.join(map(repr, twice))} "
                        "twice; keep one (delete or rename the other) and deliver it again")


def check_required(present: list[str], filename: str, fmt: str) -> None:
    """Refuses a file without a column every row needs (one error, not one per row)."""
    missing = [" or ".join(alts) for alts in REQUIRED if not any(a in present for a in alts)]
    if not missing:
        return
    what = "no row has the key" if fmt == "jsonl" else "no column"
    near = {p: c for p in present for c in COLUMNS
            if p != c and "_".join(p.strip().lower().replace("-", " ").split()) == c}
    fix = ("rename " + ", ".join(f"{p!r} to {c!r}" for p, c in near.items()) if near
           else "add it (see docs/delivery-format.md for the columns)")
    has = ", ".join(repr(p) for p in present[:20]) or "nothing readable"
    raise DataError(f"{filename}: {what} {'; nor '.join(missing)}, which every row needs; "
                    f"{fix}. The file has: {has}")
