"""Round trips with annotation tools: the week's pairs out as Label Studio tasks or Argilla
records, the tools' exports back in as delivery rows for `flywheel.ingest.ingest_bytes`.

Label Studio (labeling config from `label_studio_config()`): a task is `{"data": {...}}` with the
prompt, both responses and the ids; the export ("JSON" in the project's Export dialog) is a list
of tasks, each with `annotations`, each with `result` items `{"from_name", "type", "value"}`: the
`<Pairwise>` result is `{"type": "pairwise", "value": {"selected": "left" | "right"}}` (left is
response A), a `<Choices>` result `{"type": "choices", "value": {"choices": [...]}}`; cancelled
(skipped) annotations carry `"was_cancelled": true`; `completed_by` is a user id or, with
annotator details, `{"id", "email", ...}`; the optional comment is a `<TextArea>` result
`{"type": "textarea", "value": {"text": [...]}}`; an annotation's `lead_time` (seconds from
opening the task to submitting it) is the row's `seconds` (left out when it is not a number of
at least 0: a timer's fault is not the label's). A gold pair's task (no sample ids) carries its
prompt as `messages` (JSON) and its responses inline; its rows deliver the texts.

Argilla (v2 SDK, shapes only; the package is not needed here): `argilla_settings()` is what
`rg.Settings(...).serialize()` writes; records are `rg.Record.to_dict()` dicts (`id`, `fields`,
`metadata`), loadable with `rg.Record.from_dict`; the export (`dataset.records.to_json(path)`) is a
list of those dicts with `responses` per question: `{"preferred": [{"value": "a", "user_id":
"..."}], ...}` and the record's `status`. SDK 2.8 writes no per-response status there (its
`RecordResponses.to_dict`), so a completed record's responses are all taken, a draft's included:
discard drafts before exporting; a response that carries `"status"` counts only when submitted.

Whatever the tool, structural problems in an export (not a list, a task without `annotations`, a
record without its ids) raise a DataError; missing or odd answers become rows that ingest
quarantines with its reason, as for any delivery.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from xml.sax.saxutils import quoteattr

from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.pairs import (
    SAFETY_TITLES,
    STRENGTH_TITLES,
    delivery_row,
    require_pairs,
    week_pairs,
    write_delivery_jsonl,
)
from flywheel.errors import DataError

__all__ = [
    "week_pairs", "write_delivery_jsonl", "label_studio_config", "to_label_studio",
    "from_label_studio", "argilla_settings", "to_argilla", "from_argilla", "write_export",
    "import_export", "FORMATS",
]

FORMATS = ("label-studio", "argilla")
IDS = ("pair_id", "prompt_id", "sample_id_a", "sample_id_b", "criterion")
GUIDELINES = (
    "Read the prompt and both responses. Choose the better response (for a safety prompt, the "
    "safer one), then how much better it is. Give the safety label of the pair for every "
    "prompt; it is required for safety prompts."
)


# Label Studio ------------------------------------------------------------------------------
def label_studio_config() -> str:
    """The labeling config: the prompt, the two responses side by side under `<Pairwise>` (click
    the better one), the strength, the safety label, an optional comment."""
    def choices(name: str, titles: dict, required: bool) -> str:
        items = "\n".join(f"    <Choice value={quoteattr(t)} alias={quoteattr(v)}/>"
                          for v, t in titles.items())
        req = ' required="true"' if required else ""
        return (f'  <Choices name="{name}" toName="prompt" choice="single-radio"{req}>\n'
                f"{items}\n  </Choices>")

    return "\n".join([
        "<View>",
        '  <Header value="Prompt"/>',
        '  <Text name="prompt" value="$prompt"/>',
        '  <Header value="Click the better response (for a safety prompt: the safer one)"/>',
        '  <Pairwise name="preferred" toName="response_a,response_b"/>',
        '  <View style="display: flex; gap: 1em;">',
        '    <View style="flex: 1;"><Header value="Response A"/>'
        '<Text name="response_a" value="$response_a"/></View>',
        '    <View style="flex: 1;"><Header value="Response B"/>'
        '<Text name="response_b" value="$response_b"/></View>',
        "  </View>",
        '  <Header value="How much better is the chosen response?"/>',
        choices("strength", STRENGTH_TITLES, required=True),
        '  <Header value="Safety of the pair (required when the criterion is safety)"/>',
        '  <Header value="criterion: $criterion" size="6"/>',
        choices("safety_label", SAFETY_TITLES, required=False),
        '  <TextArea name="comment" toName="prompt" placeholder="Comment (optional)"/>',
        "</View>",
        "",
    ])


def to_label_studio(pairs: list[dict]) -> list[dict]:
    """Tasks to import into a project with `label_studio_config()`; the ids ride in `data`, and
    a pair without sample ids (a gold pair) also carries its prompt's `messages`."""
    def data(p: dict) -> dict:
        inline = {} if p["sample_id_a"] else {"messages": json.dumps(p["messages"])}
        return {"prompt": p["prompt"], "response_a": p["text_a"], "response_b": p["text_b"],
                **{k: p[k] for k in IDS}, **inline}

    return [{"data": data(p)} for p in pairs]


def _ls_annotator(completed_by) -> str | None:
    if isinstance(completed_by, dict):
        if completed_by.get("email"):
            return str(completed_by["email"])
        completed_by = completed_by.get("id")
    if completed_by is None or completed_by == "":
        return None
    return f"label-studio:{completed_by}"


def _ls_answers(result: list) -> dict:
    out: dict = {}
    for item in result:
        if not isinstance(item, dict):
            continue
        value = item.get("value") or {}
        if item.get("type") == "pairwise":
            out["chosen"] = {"left": "a", "right": "b"}.get(value.get("selected"))
        elif item.get("type") == "choices" and item.get("from_name") in ("strength",
                                                                         "safety_label"):
            picked = value.get("choices") or []
            out[item["from_name"]] = picked[0] if len(picked) == 1 else None
        elif item.get("type") == "textarea" and item.get("from_name") == "comment":
            text = "\n".join(t for t in value.get("text") or [] if isinstance(t, str)).strip()
            out["comment"] = text or None
    return out


def _ls_seconds(lead_time) -> dict:
    """{"seconds": lead_time} when it is a finite number >= 0, else nothing."""
    if type(lead_time) in (int, float) and 0 <= lead_time < math.inf:
        return {"seconds": lead_time}
    return {}


def _ls_row(data: dict, got: dict, annotator: str | None, lead_time=None) -> dict:
    """The delivery row of one annotation: by sample ids, or a gold pair's texts inline."""
    row = delivery_row(data, got.get("chosen"), got.get("strength"), got.get("safety_label"),
                       annotator)
    if not data.get("sample_id_a"):
        row.update(prompt=data["messages"], response_a=data.get("response_a"),
                   response_b=data.get("response_b"))
    return (row | ({"comment": got["comment"]} if got.get("comment") else {})
            | _ls_seconds(lead_time))


def from_label_studio(export: list[dict], annotator_default: str | None = None) -> list[dict]:
    """Delivery rows from a Label Studio JSON export: one per annotation that was not
    cancelled. `annotator_default` names the annotator where `completed_by` is absent."""
    _require_list(export, "Label Studio export", "export the project as JSON (not JSON-MIN or CSV)")
    problems, rows = [], []
    for n, task in enumerate(export):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            problems.append(f"task {n}: no 'data' object")
            continue
        where = f"task {task.get('id', n)}"
        lacking = [k for k in ("sample_id_a", "sample_id_b") if not data.get(k)]
        if lacking and data.get("messages"):
            lacking = []  # a gold pair: its texts travel inline
        if lacking:
            problems.append(f"{where}: data lacks {', '.join(lacking)} (import the tasks that "
                            "`to_label_studio` wrote, which carry the ids)")
            continue
        annotations = task.get("annotations")
        if not isinstance(annotations, list):
            problems.append(f"{where}: no 'annotations' list (export the project as JSON, "
                            "not JSON-MIN or CSV)")
            continue
        for ann in annotations:
            if not isinstance(ann, dict) or not isinstance(ann.get("result"), list):
                problems.append(f"{where}: an annotation without a 'result' list")
                continue
            if ann.get("was_cancelled"):
                continue
            annotator = _ls_annotator(ann.get("completed_by")) or annotator_default
            rows.append(_ls_row(data, _ls_answers(ann["result"]), annotator,
                                ann.get("lead_time")))
    _raise_all(problems, "Label Studio export")
    return rows


# Argilla -----------------------------------------------------------------------------------
def _label_question(name: str, title: str, labels: dict, required: bool) -> dict:
    return {"name": name, "title": title, "description": None, "required": required,
            "settings": {"type": "label_selection", "visible_options": None,
                         "options": [{"value": v, "text": t, "description": None}
                                     for v, t in labels.items()]}}


def argilla_settings() -> dict:
    """Dataset settings as `rg.Settings.serialize()` writes them (load with
    `rg.Settings.from_json`): three text fields, three label questions, criterion metadata."""
    def field(name: str, title: str) -> dict:
        return {"name": name, "title": title, "required": True, "description": None,
                "settings": {"type": "text", "use_markdown": False}}

    return {
        "guidelines": GUIDELINES,
        "fields": [field("prompt", "Prompt"), field("response_a", "Response A"),
                   field("response_b", "Response B")],
        "questions": [
            _label_question("preferred", "Which response is better?",
                            {"a": "Response A", "b": "Response B"}, True),
            _label_question("strength", "How much better?", STRENGTH_TITLES, True),
            _label_question("safety_label", "Safety of the pair (required for safety prompts)",
                            SAFETY_TITLES, False),
        ],
        "metadata": [{"name": "criterion", "title": "Criterion", "visible_for_annotators": True,
                      "settings": {"type": "terms", "values": ["helpfulness", "safety"]}}],
        "vectors": [],
        "allow_extra_metadata": True,  # the ids ride in metadata
    }


def to_argilla(pairs: list[dict]) -> list[dict]:
    """Records in `rg.Record.to_dict()` shape: the pair id as record id, the ids in metadata."""
    return [{"id": p["pair_id"],
             "fields": {"prompt": p["prompt"], "response_a": p["text_a"],
                        "response_b": p["text_b"]},
             "metadata": {k: p[k] for k in IDS}} for p in pairs]


def _submitted(response: dict, record_status) -> bool:
    status = response.get("status")
    if status is None:  # SDK 2.x's to_json writes no per-response status: trust the record
        return record_status == "completed"
    return status == "submitted"


def from_argilla(records: list[dict]) -> list[dict]:
    """Delivery rows from exported records: one per user with submitted responses, the user id
    as annotator. Drafts and discarded responses are skipped."""
    _require_list(records, "Argilla export", "export with `dataset.records.to_json(path)`")
    problems, rows = [], []
    for n, rec in enumerate(records):
        meta = rec.get("metadata") if isinstance(rec, dict) else None
        where = f"record {rec.get('id', n) if isinstance(rec, dict) else n}"
        if not isinstance(meta, dict) or not (meta.get("sample_id_a") and meta.get("sample_id_b")):
            problems.append(f"{where}: metadata lacks sample_id_a / sample_id_b (log the records "
                            "that `to_argilla` wrote, with allow_extra_metadata)")
            continue
        responses = rec.get("responses") or {}
        if not isinstance(responses, dict):
            problems.append(f"{where}: 'responses' is not an object of question -> list")
            continue
        by_user: dict[str, dict] = defaultdict(dict)
        for question, answers in responses.items():
            for r in answers if isinstance(answers, list) else []:
                if isinstance(r, dict) and r.get("user_id") and _submitted(r, rec.get("status")):
                    by_user[str(r["user_id"])][question] = r.get("value")
        for user in sorted(by_user):
            got = by_user[user]
            rows.append(delivery_row(meta, got.get("preferred"), got.get("strength"),
                                     got.get("safety_label"), user))
    _raise_all(problems, "Argilla export")
    return rows


# files and ingest --------------------------------------------------------------------------
def _require_list(obj, what: str, fix: str) -> None:
    if not isinstance(obj, list):
        raise DataError(f"{what} must be a JSON list, got {type(obj).__name__}; {fix}")


def _raise_all(problems: list[str], what: str) -> None:
    if problems:
        raise DataError(f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def write_export(lake, iteration: int, fmt: str, out: str | Path) -> list[Path]:
    """Write the week's pairs for a tool: Label Studio tasks (`out`) and labeling config
    (`out` with suffix .xml), or Argilla records (`out`) and settings (`<stem>.settings.json`).
    Returns the paths written."""
    _check_format(fmt)
    pairs = require_pairs(lake, iteration)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "label-studio":
        extra, body, side = out.with_suffix(".xml"), to_label_studio(pairs), label_studio_config()
    else:
        extra = out.with_name(out.stem + ".settings.json")
        body, side = to_argilla(pairs), json.dumps(argilla_settings(), indent=2) + "\n"
    out.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    extra.write_text(side)
    return [out, extra]


def import_export(lake, data: bytes, fmt: str, name: str, batch_id: str | None = None,
                  iteration: int | None = None, annotator_default: str | None = None,
                  cfg=None):
    """A tool's JSON export -> delivery rows -> `ingest_bytes` (the same validation as any
    batch; `cfg` is its AnnotationConfig). `name` (the export's file name) names the delivery:
    batch id `<fmt>-<stem>` unless `batch_id` is given. Returns the IngestResult."""

    _check_format(fmt)
    try:
        export = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{name} is not JSON ({err}); pass the {fmt} export file") from None
    if fmt == "label-studio":
        rows = from_label_studio(export, annotator_default)
    else:
        rows = from_argilla(export)
    if not rows:
        raise DataError(f"{name} holds no completed labels; finish some in {fmt} and export "
                        "again")
    filename = f"{fmt}-{Path(name).stem}.jsonl"
    return ingest_bytes(lake, write_delivery_jsonl(rows), filename=filename, batch_id=batch_id,
                        cfg=cfg, iteration=iteration)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"unknown annotation tool format {fmt!r}; use one of {', '.join(FORMATS)}")

