"""Row validation of a delivery: the reasons a row can be rejected for, and the one DuckDB query
that gives each delivered row its first reason (or none). docs/ingest-reasons.md explains each
reason and how to fix the row; tests/test_ingest_reasons_doc.py keeps the two in step.

The query reads the `delivery` table (delivery.read_delivery's text columns plus the `_n`
columns of labels.normalised_labels and `prompt_key`; `seconds_n` is its own: the delivered
seconds as a number) joined to the lake's `samples` and
`prompts`. A blank value (empty or whitespace only) is a missing one: labels are blank when
their normalised `_n` value is NULL; ids are trimmed as Python's str.strip() would.
"""

from __future__ import annotations

from flywheel.lake.schemas import CRITERIA, SAFETY_LABELS, STRENGTHS

EXCLUDED_LABEL = "chosen_unsafe_other_safe"
IN_HOUSE = "in-house"
CHOICES = ("a", "b")  # `chosen`: the side the annotator preferred
SPLITS = ("train", "test")  # `split`, when given

# Every reason a row can be rejected for, in the order they are checked (the first one wins).
# The first four are found while the file is read (delivery.py); an importer may also name its
# own (`reject_reason`, e.g. import_prompt_mismatch).
REASONS = (
    "malformed_row", "invalid_encoding", "duplicate_key", "invalid_type",
    "missing_prompt", "missing_response", "missing_chosen",
    "missing_criterion", "missing_annotator", "missing_strength", "missing_safety_label",
    "invalid_chosen", "invalid_strength", "invalid_criterion", "invalid_safety_label",
    "invalid_split", "invalid_seconds", "invalid_prompt", "excluded_chosen_unsafe_other_safe",
    "unknown_prompt_id", "unknown_sample_id", "sample_prompt_mismatch", "empty_prompt",
    "empty_response", "oversize_text", "identical_responses", "duplicate_row",
)


def _sql_list(values) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# whitespace as Python's str.strip() sees it: RE2's \s is only [\t\n\f\r ]
_WS = r"[\s\x0b\x1c-\x1f\x85\p{Z}]"


def _blank(x: str) -> str:
    """SQL for `x.strip() == ""`. DuckDB's trim strips only spaces (category Zs) and walks the
    whole string code point by code point (8 us for 900 characters); a regex anchored at the
    start stops at the first other character."""
    return f"regexp_matches({x}, '^{_WS}*$')"


def _trimmed(x: str) -> str:
    """SQL for `x.strip()`, paid for only by the texts that start or end with whitespace."""
    return (f"CASE WHEN regexp_matches({x}, '^{_WS}') OR regexp_matches({x}, '{_WS}$') "
            f"THEN regexp_replace(regexp_replace({x}, '^{_WS}+', ''), '{_WS}+$', '') "
            f"ELSE {x} END")


def _present(x: str) -> str:
    """SQL for `x.strip() or None`: an id with its whitespace trimmed, NULL when blank."""
    return f"CASE WHEN NOT {_blank(x)} THEN {_trimmed(x)} END"


def _longer(x: str, n: int) -> str:
    """`length(x) > n`, counting code points only when the bytes (strlen, at least as many)
    are over n: length walks the string."""
    return f"(CASE WHEN strlen({x}) > {n} THEN length({x}) > {n} ELSE false END)"


def validation_sql(max_chars: int) -> str:
    """The query creating the temporary table `checked`: each delivered row with its `reason`
    (NULL when accepted), its sample ids and delivered texts by side (a side given by its
    sample id keeps the id, not a copy of the sample's text: NULL), and the comparison id
    `cid` (of the texts, wherever they came from)."""
    text_a = "coalesce(d.response_a, sa.text)"
    text_b = "coalesce(d.response_b, sb.text)"
    return f"""
    CREATE TEMP TABLE checked AS
    WITH n AS (
      SELECT d.*,
        {_present('d.prompt_id')} AS pid_in, {_present('d.sample_id_a')} AS sa_id,
        {_present('d.sample_id_b')} AS sb_id, d.safety_label_n AS safety_n,
        {_present('d.reject_reason')} AS reject_given,
        CASE WHEN NOT {_blank('d.seconds')} THEN TRY_CAST({_trimmed('d.seconds')} AS DOUBLE)
          END AS seconds_n
      FROM delivery d
    ), s AS MATERIALIZED (
      -- the samples the delivery names, read once: joining `samples` itself twice would hash
      -- every sample's text twice
      SELECT id, prompt_id, text FROM samples
      WHERE id IN (SELECT sa_id FROM n UNION ALL SELECT sb_id FROM n)
    ), j AS (
      SELECT d.*, sa.id AS sa_found, sb.id AS sb_found, sa.prompt_id AS sa_prompt,
        sb.prompt_id AS sb_prompt, {text_a} AS text_a, {text_b} AS text_b,
        coalesce(d.pid_in, nullif(d.prompt_key, ''), sa.prompt_id) AS prompt_ref,
        p.id AS pid_found
      FROM n d
      LEFT JOIN s sa ON sa.id = d.sa_id
      LEFT JOIN s sb ON sb.id = d.sb_id
      LEFT JOIN prompts p ON p.id = d.pid_in
    ), r AS (
      SELECT *, CASE
        WHEN reject_given IS NOT NULL THEN trim(split_part(reject_given, ':', 1))
        WHEN pid_in IS NULL AND prompt IS NULL AND sa_id IS NULL THEN 'missing_prompt'
        WHEN (response_a IS NULL AND sa_id IS NULL) OR (response_b IS NULL AND sb_id IS NULL)
          THEN 'missing_response'
        WHEN chosen_n IS NULL THEN 'missing_chosen'
        WHEN criterion_n IS NULL THEN 'missing_criterion'
        WHEN annotator_n IS NULL THEN 'missing_annotator'
        WHEN source_n = '{IN_HOUSE}' AND strength_n IS NULL THEN 'missing_strength'
        WHEN source_n = '{IN_HOUSE}' AND criterion_n = 'safety' AND safety_n IS NULL
          THEN 'missing_safety_label'
        WHEN chosen_n NOT IN {_sql_list(CHOICES)} THEN 'invalid_chosen'
        WHEN strength_n NOT IN {_sql_list(STRENGTHS)} THEN 'invalid_strength'
        WHEN criterion_n NOT IN {_sql_list(CRITERIA)} THEN 'invalid_criterion'
        WHEN safety_n NOT IN {_sql_list(SAFETY_LABELS + (EXCLUDED_LABEL,))}
          THEN 'invalid_safety_label'
        WHEN split_n NOT IN {_sql_list(SPLITS)} THEN 'invalid_split'
        WHEN NOT {_blank('seconds')} AND (seconds_n IS NULL OR NOT isfinite(seconds_n)
          OR seconds_n < 0) THEN 'invalid_seconds'
        WHEN prompt_key = '' THEN 'invalid_prompt'
        WHEN safety_n = '{EXCLUDED_LABEL}' THEN 'excluded_chosen_unsafe_other_safe'
        WHEN pid_in IS NOT NULL AND pid_found IS NULL THEN 'unknown_prompt_id'
        WHEN (sa_id IS NOT NULL AND sa_found IS NULL) OR (sb_id IS NOT NULL AND sb_found IS NULL)
          THEN 'unknown_sample_id'
        WHEN coalesce(sa_prompt, prompt_ref) <> prompt_ref
          OR coalesce(sb_prompt, prompt_ref) <> prompt_ref THEN 'sample_prompt_mismatch'
        WHEN prompt IS NOT NULL AND {_blank('prompt')} THEN 'empty_prompt'
        WHEN {_blank('text_a')} OR {_blank('text_b')} THEN 'empty_response'
        WHEN {_longer('text_a', max_chars)} OR {_longer('text_b', max_chars)}
          OR {_longer('prompt', max_chars)} THEN 'oversize_text'
        WHEN {_trimmed('text_a')} = {_trimmed('text_b')} THEN 'identical_responses'
      END AS reason_1
      FROM j
    ), c AS (
      SELECT *,
        CASE WHEN chosen_n = 'a' THEN sa_id ELSE sb_id END AS chosen_sample_id,
        CASE WHEN chosen_n = 'a' THEN sb_id ELSE sa_id END AS rejected_sample_id,
        CASE WHEN chosen_n = 'a' THEN text_a ELSE text_b END AS chosen_text,
        CASE WHEN chosen_n = 'a' THEN text_b ELSE text_a END AS rejected_text
      FROM r
    ), k AS (
      SELECT *, CASE WHEN reason_1 IS NULL THEN substr(md5(concat_ws(chr(31), 'comparison',
          prompt_ref, chosen_text, rejected_text, coalesce(strength_n, ''), criterion_n,
          coalesce(safety_n, ''), annotator_n, source_n)), 1, 16) END AS cid
      FROM c
    )
    SELECT * EXCLUDE (text_a, text_b, reject_given, chosen_text, rejected_text),
      CASE WHEN chosen_n = 'a' THEN response_a ELSE response_b END AS chosen_text,
      CASE WHEN chosen_n = 'a' THEN response_b ELSE response_a END AS rejected_text,
      reason_1 AS reason
    FROM k
    """
