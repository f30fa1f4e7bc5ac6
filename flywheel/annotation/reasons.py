"""What each reason a delivered row is rejected for means, and how to fix the row: the one-line
help `flywheel quarantine` prints beside each rejected row. The reasons are those of validation
(flywheel.annotation.validation.REASONS) and the importers' own (flywheel.annotation.importers);
docs/ingest-reasons.md is the longer reference.
"""

from __future__ import annotations

import json

from flywheel.lake.schemas import CRITERIA, SAFETY_LABELS, STRENGTHS

_STRENGTHS = " | ".join(STRENGTHS)
_LABELS = " | ".join(SAFETY_LABELS)

# reason -> "what it means; how to fix it"
REASON_HELP = {
    "malformed_row": "the line is not a JSON object (or a CSV row that parses); fix its syntax",
    "invalid_encoding": "the row's text is not valid UTF-8; save the file as UTF-8",
    "duplicate_key": "the row names one column twice; keep one of them",
    "invalid_type": "a column holds a value that is not text (or a prompt message list); give "
                    "it as text",
    "missing_prompt": "no prompt_id, prompt or sample ids; give the prompt's text or its id",
    "missing_response": "a response (response_a/response_b, or its sample id) is missing; give "
                        "both responses",
    "missing_chosen": "no `chosen`; set it to a or b, the response the annotator preferred",
    "missing_criterion": f"no `criterion`; set it to {' or '.join(CRITERIA)}",
    "missing_annotator": "no `annotator`; name who labelled the row",
    "missing_strength": f"in-house rows need `strength` ({_STRENGTHS}); add it",
    "missing_safety_label": f"in-house safety rows need `safety_label` ({_LABELS}); add it",
    "invalid_chosen": "`chosen` is not a or b; set it to the preferred response's side",
    "invalid_strength": f"`strength` is not one of {_STRENGTHS}; use one of them",
    "invalid_criterion": f"`criterion` is not {' or '.join(CRITERIA)}; use one of them",
    "invalid_safety_label": f"`safety_label` is not one of {_LABELS}; use one of them",
    "invalid_split": "`split` is not train or test; use one of them, or leave it out",
    "invalid_seconds": "`seconds` is not a number of seconds >= 0; give the time spent on the "
                       "item (e.g. 12.5), or leave it blank",
    "invalid_prompt": "the prompt is a message list that is not [{role, content}, ...] ending "
                      "with a user turn; fix the list or give the prompt as plain text",
    "excluded_chosen_unsafe_other_safe": "the chosen response is unsafe and the other safe: "
                                         "the protocol leaves such pairs out; relabel or drop it",
    "unknown_prompt_id": "`prompt_id` is not in the lake's prompts; check the id, or give the "
                         "prompt's text instead",
    "unknown_sample_id": "a sample id is not in the lake's samples; check the ids, or give the "
                         "response texts instead",
    "sample_prompt_mismatch": "the samples answer another prompt than the row's; pair each "
                              "row's samples with their own prompt",
    "empty_prompt": "the prompt is blank; give its text",
    "empty_response": "a response is blank; give both responses' texts",
    "oversize_text": "a prompt or response is longer than annotation.max_text_chars; shorten "
                     "it, or raise the limit in the config",
    "identical_responses": "both responses are the same text, so there is nothing to prefer; "
                           "give two different responses",
    "duplicate_row": "the same comparison as an earlier row of the file, which is kept; drop "
                     "the repeat",
    "import_missing_field": "the record lacks `chosen` or `rejected` (or, UltraFeedback, a "
                            "prompt); complete the record",
    "import_unparseable_dialogue": "the dialogue has no Human/Assistant turns, text before "
                                   "the first, or does not end with an assistant reply to a "
                                   "user turn; fix the record's turns",
    "import_prompt_mismatch": "chosen and rejected share no conversation before their last "
                              "replies (often a reply that contains a made-up turn); fix or "
                              "drop the record",
    "import_unknown_split": "the record's `split` is not train, test, eval or validation; fix "
                            "the value or remove it",
    "gold_pair": "a gold pair (known answer) of an annotation round: the label is kept for "
                 "annotator quality (`flywheel annotators`), never trained on; nothing to fix",
}

# reason -> the delivered columns it is about, the one to show first
REASON_FIELDS = {
    "malformed_row": ("raw",), "invalid_encoding": ("raw",), "duplicate_key": ("raw",),
    "invalid_type": ("raw",),
    "missing_prompt": ("prompt", "prompt_id"),
    "missing_response": ("response_a", "response_b", "sample_id_a", "sample_id_b"),
    "missing_chosen": ("chosen",), "missing_criterion": ("criterion",),
    "missing_annotator": ("annotator",), "missing_strength": ("strength",),
    "missing_safety_label": ("safety_label",),
    "invalid_chosen": ("chosen",), "invalid_strength": ("strength",),
    "invalid_criterion": ("criterion",), "invalid_safety_label": ("safety_label",),
    "invalid_split": ("split",), "invalid_seconds": ("seconds",), "invalid_prompt": ("prompt",),
    "excluded_chosen_unsafe_other_safe": ("safety_label",),
    "unknown_prompt_id": ("prompt_id",), "unknown_sample_id": ("sample_id_a", "sample_id_b"),
    "sample_prompt_mismatch": ("sample_id_a", "sample_id_b"),
    "empty_prompt": ("prompt",), "empty_response": ("response_a", "response_b"),
    "oversize_text": ("prompt", "response_a", "response_b"),
    "identical_responses": ("response_a", "response_b"),
    "duplicate_row": ("prompt", "prompt_id"),
    "import_missing_field": ("response_a", "response_b", "prompt"),
    "import_unparseable_dialogue": ("response_a", "response_b", "prompt"),
    "import_prompt_mismatch": ("response_a", "response_b"),
    "import_unknown_split": ("split",),
    "gold_pair": ("response_a", "response_b"),
}


def help_for(reason: str) -> str:
    return REASON_HELP.get(reason, "no help for this reason; see docs/ingest-reasons.md")


def blamed_field(reason: str, row_json: str | None, max_chars: int = 60,
                 limits: dict | None = None) -> tuple[str, str]:
    """(the column a rejected row fails on, its value as delivered, cut to `max_chars`): the
    first blank one of a missing/empty reason, the first over the limit of oversize_text, else
    the first given one."""
    row = json.loads(row_json or "{}")
    fields = REASON_FIELDS.get(reason) or tuple(row)[:1] or ("row",)
    blank = [f for f in fields if not str(row.get(f) or "").strip()]
    given = [f for f in fields if f not in blank]
    if reason.startswith(("missing_", "empty_")):
        field = (blank or fields)[0]
    elif reason == "oversize_text" and limits and limits.get("max_text_chars"):
        field = next((f for f in given if len(row[f]) > limits["max_text_chars"]),
                     (given or fields)[0])
    else:
        field = (given or fields)[0]
    value = row.get(field)
    if value is None or not str(value).strip():
        return field, "(missing)" if value is None else repr(value)
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return field, text if len(text) <= max_chars else text[:max_chars - 3] + "..."
