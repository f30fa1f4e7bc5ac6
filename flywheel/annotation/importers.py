"""Importers: open-source preference sets turned into delivery rows, the annotation delivery format
that `flywheel.ingest` validates and lands in the lake.

    hh-rlhf        Anthropic HH-RLHF: {"chosen", "rejected"}, each a whole dialogue marked with
                   "\\n\\nHuman: " and "\\n\\nAssistant: "; they share every turn but the last.
                   harmless-* sets are safety comparisons, helpful-* sets helpfulness ones.
    ultrafeedback  UltraFeedback binarized (trl-lib, HuggingFaceH4): "prompt" and "chosen" /
                   "rejected", either the final responses as text or chat message lists whose
                   last message is the response. GPT-4 ratings of helpfulness.

Every input record gives exactly one delivery row, so delivered counts reconcile with the source.
A record that cannot be converted still gives its row, with `reject_reason` set (import_*) and its
original texts kept, so ingest quarantines it with that reason instead of it going missing.
Texts are stripped of surrounding whitespace; the chosen response is always `response_a`.

Every row names its split: the record's own when it carries one, else `--split`, else the one the
file name says (a `train` or `test` token: hh_rlhf_harmless_base_test.jsonl.gz), else train, so
a test set is never filed as training data for want of a flag (`import_split`).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from flywheel.errors import DataError
from flywheel.lake.schemas import CRITERIA

FORMATS = ("hh-rlhf", "ultrafeedback")
DELIVERY_COLUMNS = (
    "prompt", "response_a", "response_b", "chosen", "strength", "criterion", "safety_label",
    "annotator", "source", "split", "reject_reason",
)
SPLITS = ("train", "test")
HH_ANNOTATOR = "anthropic-hh-rlhf"
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
UF_ANNOTATOR = "ultrafeedback-gpt4"
UF_SOURCE = "ultrafeedback-binarized"
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")

_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_ROLES = ("system", "user", "assistant")
# the split a record names itself (the UltraFeedback sample says "eval" for its test rows)
_RECORD_SPLITS = {"train": "train", "test": "test", "eval": "test", "validation": "test"}
# a split named in a file name: a whole token (week-3-test.jsonl, test.jsonl, x_test_dev.json)
_NAME_SPLIT = re.compile(r"(?<![a-z0-9])(train|test)(?![a-z0-9])")


# loading -------------------------------------------------------------------------------------
def load_records(spec: str, split: str | None = None) -> Iterator[dict]:
    """Records of a local file (.jsonl, .jsonl.gz, .json array, .parquet), read as a stream, or
    of a Hugging Face dataset "owner/name[/data_dir]" (`split` is its split, "train" if None)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return _read_file(path)
    if path.exists():
        raise DataError(f"{spec} is a folder; pass one data file ({', '.join(FILE_SUFFIXES)})")
    if spec.startswith((".", "/", "~")) or spec.lower().endswith(FILE_SUFFIXES):
        raise DataError(f"{spec} does not exist; check the path of the data file")
    return _load_hub(spec, split)


def _read_file(path: Path) -> Iterator[dict]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _read_parquet(path)
    if name.removesuffix(".gz").endswith(".jsonl"):
        return _read_jsonl(path)
    if name.removesuffix(".gz").endswith(".json"):
        return iter(_read_json_array(path))
    raise DataError(f"{path}: cannot read this kind of file; convert it to one of "
                    f"{', '.join(FILE_SUFFIXES)}")


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> Iterator[dict]:
    with _open_text(path) as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {n} is not JSON ({err.msg}); fix or remove that "
                                "line and import again") from err


def _read_json_array(path: Path) -> list:
    with _open_text(path) as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not one JSON document ({err.msg}); if it holds one "
                            "record per line, name it .jsonl") from err
    if not isinstance(records, list):
        raise DataError(f"{path} holds a JSON {type(records).__name__}, not an array of records; "
                        "pass a JSON array or a .jsonl file")
    return records


def _read_parquet(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _load_hub(spec: str, split: str | None) -> Iterator[dict]:
    parts = spec.split("/")
    name, data_dir = "/".join(parts[:2]), "/".join(parts[2:]) or None
    import datasets

    try:
        dataset = datasets.load_dataset(name, data_dir=data_dir, split=split or "train")
    except Exception as err:  # offline, unknown name, no such split: one fix for all of them
        raise DataError(
            f"{spec!r} is not a file here, and loading it as a Hugging Face dataset failed "
            f"({type(err).__name__}: {err}); download the files and pass the local path "
            f"({', '.join(FILE_SUFFIXES)})"
        ) from err
    return iter(dataset)


# naming --------------------------------------------------------------------------------------
def _name(spec: str) -> str:
    return spec.lower().replace("_", "-")


def detect_format(spec: str) -> str:
    """The format a file or dataset name says it has."""
    name = _name(spec)
    if "ultrafeedback" in name:
        return "ultrafeedback"
    if re.search(r"(?<![a-z0-9])hh(?![a-z0-9])", name) or "harmless" in name or "helpful" in name:
        return "hh-rlhf"
    raise DataError(f"cannot tell the format of {spec} from its name; pass --format "
                    f"({' or '.join(FORMATS)})")


def record_format(path: str) -> str | None:
    """The open-source format of a local file, from its first record, whatever its name says:
    hh-rlhf for `chosen` and `rejected` dialogue texts alone, ultrafeedback for a `prompt`
    with them or for message lists; None for anything else (a delivery in the annotation
    protocol, whose `chosen` is "a" or "b", or a file these readers do not take)."""
    if not Path(path).is_file():
        return None
    try:
        record = next(load_records(path), None)
    except DataError:
        return None
    if not isinstance(record, dict) or not {"chosen", "rejected"} <= record.keys():
        return None
    chosen = record["chosen"]
    if isinstance(chosen, list) or "prompt" in record or "prompt_id" in record:
        return "ultrafeedback"
    return "hh-rlhf" if isinstance(chosen, str) else None


def hh_criterion(spec: str) -> str:
    """safety for a harmless set, helpfulness for a helpful one, from the file or dataset name."""
    name = _name(spec)
    found = {c for word, c in (("harmless", "safety"), ("helpful", "helpfulness")) if word in name}
    if len(found) != 1:
        raise DataError(
            f"cannot tell from the name {spec} whether its comparisons are about safety "
            f"(harmless sets) or helpfulness (helpful sets); pass criterion= "
            f"(--criterion {' or '.join(CRITERIA)})"
        )
    return found.pop()


def hh_source(spec: str) -> str:
    """e.g. .../hh_rlhf_harmless_base_test_dev.jsonl.gz -> anthropic-hh-rlhf/harmless-base"""
    name = _name(spec)
    subset = next((s for s in HH_SUBSETS if s in name), None)
    return f"anthropic-hh-rlhf/{subset}" if subset else "anthropic-hh-rlhf"


def name_split(spec: str) -> str | None:
    """The split a file or dataset name says, from the last part of it; None when it names
    neither train nor test, or both."""
    found = set(_NAME_SPLIT.findall(Path(spec.rstrip("/")).name.lower()))
    return found.pop() if len(found) == 1 else None


def import_split(spec: str, flag: str | None = None) -> tuple[str, str]:
    """The split of the imported records that carry none, and why: `flag` (--split) when given,
    even against the file name (the reason says so), else the file name's, else train."""
    named = name_split(spec)
    if flag is not None:
        if flag not in SPLITS:
            raise DataError(f"split {flag!r} is not one of {SPLITS}")
        if named not in (None, flag):
            return flag, f"from --split, over the file name, which says {named}"
        return flag, "from --split"
    if named is not None:
        return named, "from the file name"
    return "train", "the default: no --split, and no train or test in the file name"


def describe_split(rows: list[dict], split: str, why: str) -> str:
    """One line on the split the rows were filed under, and the records that named their own."""
    line = f"split: {split} ({why})"
    own = {}
    for row in rows:
        if row["split"] != split:
            own[row["split"]] = own.get(row["split"], 0) + 1
    if own:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(own.items()))
        line += f"; records that name their own split keep it: {counts}"
    return line


# rows ----------------------------------------------------------------------------------------
def _row(prompt: list[dict], chosen: str, rejected: str, meta: dict, split: str) -> dict:
    return {"prompt": json.dumps(prompt), "response_a": chosen, "response_b": rejected,
            "chosen": "a", "strength": None, **meta, "split": split, "reject_reason": None}


def _reject(reason: str, record, meta: dict, split: str) -> dict:
    """The record's own texts, unconverted, so the quarantined row shows what was wrong."""
    def raw(key):
        value = record.get(key) if isinstance(record, dict) else None
        return value if value is None or isinstance(value, str) else json.dumps(value, default=str)

    return {"prompt": raw("prompt"), "response_a": raw("chosen"), "response_b": raw("rejected"),
            "chosen": "a", "strength": None, **meta, "split": split, "reject_reason": reason}


def _meta(criterion: str, annotator: str, source: str, split: str) -> dict:
    if criterion not in CRITERIA:
        raise DataError(f"criterion {criterion!r} is not one of {CRITERIA}")
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {SPLITS}")
    if not source or source == "in-house":
        raise DataError(f"source {source!r}: name the open-source set the rows come from")
    return {"criterion": criterion, "safety_label": None, "annotator": annotator, "source": source}


def parse_dialogue(text: str) -> list[dict]:
    """Messages of an HH dialogue: each "\\n\\nHuman:" turn a user message, each "\\n\\nAssistant:"
    turn an assistant one, contents stripped. Raises ValueError on text with no turn markers or
    with text before the first one (no one can say whose it is)."""
    parts = _TURN.split(text)
    if len(parts) == 1:
        raise ValueError("no '\\n\\nHuman:' or '\\n\\nAssistant:' turn markers")
    if parts[0].strip():
        raise ValueError(f"text before the first turn marker: {parts[0][:40]!r}")
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()}
            for i in range(1, len(parts), 2)]


def _messages(value) -> list[dict]:
    """A chat message list, checked, contents stripped."""
    if not isinstance(value, list):
        raise ValueError("not a list of messages")
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise ValueError(f"not a {{role, content}} message with role in {_ROLES}: {m!r:.60}")
        if not isinstance(m.get("content"), str):
            raise ValueError("message content is not text")
        out.append({"role": m["role"], "content": m["content"].strip()})
    return out


def _final_reply(messages: list[dict]) -> tuple[list[dict], str]:
    """(the turns before, the final assistant reply)."""
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError("the dialogue does not end with an assistant reply to earlier turns")
    return messages[:-1], messages[-1]["content"]


def _own_split(record, split: str) -> str | None:
    """The record's own split (train; test, eval or validation -> test) over `split`; None for
    a value that is none of these."""
    value = record.get("split") if isinstance(record, dict) else None
    return split if value is None else _RECORD_SPLITS.get(str(value).lower())


def _hh_row(record, meta: dict, split: str) -> dict:
    texts = [record.get(k) if isinstance(record, dict) else None for k in ("chosen", "rejected")]
    if not all(isinstance(t, str) for t in texts):
        return _reject("import_missing_field", record, meta, split)
    own = _own_split(record, split)
    if own is None:
        return _reject("import_unknown_split", record, meta, split)
    split = own
    try:
        (prompt, chosen), (other, rejected) = (_final_reply(parse_dialogue(t)) for t in texts)
    except ValueError:
        return _reject("import_unparseable_dialogue", record, meta, split)
    if prompt != other:
        return _reject("import_prompt_mismatch", record, meta, split)
    if prompt[-1]["role"] != "user":
        return _reject("import_unparseable_dialogue", record, meta, split)
    return _row(prompt, chosen, rejected, meta, split)


def hh_rlhf_rows(records: Iterable[dict], source: str, criterion: str,
                 split: str = "train") -> Iterator[dict]:
    """One delivery row per HH-RLHF record, made as records are read (arguments are checked at
    the call); a record's own `split` wins over `split`. Rejected rows: import_missing_field
    (chosen or rejected is not text), import_unparseable_dialogue (no turn markers, text before
    the first one, a dialogue that does not end with an assistant reply, or a prompt that does
    not end with a user turn), import_prompt_mismatch (the turns before the two final replies
    differ) and import_unknown_split (a record's own split is not train or test). In the
    Anthropic test files every mismatch is a reply that itself contains "\n\nAssistant:", so it
    reads as two assistant turns, and every unparseable dialogue a reply that goes on with a
    "\n\nHuman:" turn: replies with made-up turns, quarantined rather than guessed at."""
    meta = _meta(criterion, HH_ANNOTATOR, source, split)
    return (_hh_row(record, meta, split) for record in records)


def _uf_response(value) -> tuple[list[dict], str]:
    if isinstance(value, str):
        return [], value.strip()
    messages = _messages(value)
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("the message list does not end with an assistant message")
    return messages[:-1], messages[-1]["content"]


def _uf_prompt(value) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value.strip()}]
    return _messages(value)


def _uf_row(record, meta: dict, split: str) -> dict:
    if not isinstance(record, dict) or any(record.get(k) is None for k in ("chosen", "rejected")):
        return _reject("import_missing_field", record, meta, split)
    own = _own_split(record, split)
    if own is None:
        return _reject("import_unknown_split", record, meta, split)
    split = own
    try:
        prompt = _uf_prompt(record.get("prompt"))
        (before, chosen), (other, rejected) = (_uf_response(record[k])
                                               for k in ("chosen", "rejected"))
    except ValueError:
        return _reject("import_unparseable_dialogue", record, meta, split)
    if before != other:
        return _reject("import_prompt_mismatch", record, meta, split)
    if before:  # the conversation is in the messages; a `prompt` given too must be its end
        if prompt and prompt != before[-len(prompt):]:
            return _reject("import_prompt_mismatch", record, meta, split)
        prompt = before
    if not prompt:
        return _reject("import_missing_field", record, meta, split)
    if prompt[-1]["role"] != "user":
        return _reject("import_unparseable_dialogue", record, meta, split)
    return _row(prompt, chosen, rejected, meta, split)


def ultrafeedback_rows(records: Iterable[dict], source: str = UF_SOURCE,
                       split: str = "train") -> Iterator[dict]:
    """One delivery row per UltraFeedback binarized record; a record's own `split` (train, or
    eval/test -> test) wins over `split`. Rejected: import_missing_field, import_unknown_split,
    import_unparseable_dialogue, import_prompt_mismatch (chosen and rejected conversations, or
    `prompt` and the conversation, disagree)."""
    meta = _meta("helpfulness", UF_ANNOTATOR, source, split)
    return (_uf_row(record, meta, split) for record in records)


# whole files ---------------------------------------------------------------------------------
def convert(spec: str, fmt: str | None = None, criterion: str | None = None,
            split: str | None = None, limit: int | None = None,
            source: str | None = None) -> list[dict]:
    """Delivery rows of a file or Hugging Face dataset: the first `limit` records, if given.
    `split` is the split of records that carry none (and the dataset split loaded by name);
    None: the one `import_split` finds."""
    split, _ = import_split(spec, split)
    fmt = fmt or detect_format(spec)
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r} is not one of {FORMATS}; pass --format")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of records; got {limit}")
    if fmt == "hh-rlhf":
        criterion, source = criterion or hh_criterion(spec), source or hh_source(spec)
    elif criterion not in (None, "helpfulness"):
        raise DataError(f"UltraFeedback rates helpfulness; got criterion {criterion!r}: "
                        "leave --criterion out")
    else:
        criterion, source = "helpfulness", source or UF_SOURCE
    _meta(criterion, "", source, split)  # bad arguments fail before anything is loaded
    records = islice(load_records(spec, split=split), limit)
    if fmt == "hh-rlhf":
        return list(hh_rlhf_rows(records, source, criterion, split))
    return list(ultrafeedback_rows(records, source, split))


def write_delivery(rows: list[dict], path) -> Path:
    """The rows as a JSONL delivery file (keys exactly DELIVERY_COLUMNS, in that order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in DELIVERY_COLUMNS}, ensure_ascii=False) + "\n")
    return path
