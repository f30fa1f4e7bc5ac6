"""Arrow schemas of the lake's tables. Every row has an `id`: a content hash of what makes it
itself, so writing the same row twice is a no-op. Nested values (messages, parameters, lineage,
metrics) are JSON strings, readable as-is by DuckDB's JSON functions."""

import hashlib
import json

import pyarrow as pa

CRITERIA = ("helpfulness", "safety")
# Llama 2's four strength levels, strongest first (index = margin-table position).
STRENGTHS = ("significantly_better", "better", "slightly_better", "negligibly_better")
SAFETY_LABELS = ("chosen_safe_other_unsafe", "both_safe", "both_unsafe")

_ts = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "prompts": pa.schema(
        [
            ("id", pa.string()),
            ("messages", pa.string()),  # JSON list of {role, content}
            ("source", pa.string()),
            ("criterion", pa.string()),  # helpfulness | safety
            ("split", pa.string()),  # train | heldout
        ]
    ),
    "samples": pa.schema(
        [
            ("id", pa.string()),
            ("prompt_id", pa.string()),
            ("policy_id", pa.string()),
            ("iteration", pa.int64()),
            ("purpose", pa.string()),  # annotation | rejection | evaluation
            ("params", pa.string()),  # JSON: backend, temperature, top_p, max_new_tokens, seed
            ("text", pa.string()),
            ("token_count", pa.int64()),
            ("logprob_sum", pa.float64()),
            ("created_at", _ts),
        ]
    ),
    "comparisons": pa.schema(
        [
            ("id", pa.string()),
            ("prompt_id", pa.string()),
            ("chosen_sample_id", pa.string()),
            ("rejected_sample_id", pa.string()),
            ("chosen_text", pa.string()),
            ("rejected_text", pa.string()),
            ("strength", pa.string()),
            ("criterion", pa.string()),
            ("safety_label", pa.string()),
            ("annotator", pa.string()),
            ("batch_id", pa.string()),  # the batch's name (deliveries of it share it)
            ("delivery_id", pa.string()),  # the delivered file the row came from
            ("source", pa.string()),  # in-house | name of an open-source set
            ("split", pa.string()),  # train | test
            ("comment", pa.string()),  # the annotator's note, if any (NULL in older rows)
            ("seconds", pa.float64()),  # time spent on the item, if known (NULL in older rows)
            ("created_at", _ts),
        ]
    ),
    # one row per delivered file: a batch re-delivered corrected has two rows, one name
    "batches": pa.schema(
        [
            ("id", pa.string()),  # delivery id: hash of batch name and file checksum
            ("batch_id", pa.string()),
            ("iteration", pa.int64()),
            ("source", pa.string()),  # in-house, simulated, review, or an open-source set
            ("filename", pa.string()),
            ("raw_uri", pa.string()),  # the delivered file, kept byte for byte
            ("delivered", pa.int64()),
            ("accepted", pa.int64()),  # valid rows, new or already in the lake
            ("new", pa.int64()),
            ("rejected", pa.int64()),
            ("heldout", pa.int64()),
            ("checksum", pa.string()),  # sha256 of the delivered bytes
            ("summary", pa.string()),  # JSON: counts by reason, config used
            ("status", pa.string()),
            ("created_at", _ts),
        ]
    ),
    # rejected rows of every delivery, each with the first reason it failed
    "quarantine": pa.schema(
        [
            ("id", pa.string()),
            ("delivery_id", pa.string()),
            ("batch_id", pa.string()),
            ("row_index", pa.int64()),  # 0-based position in the delivered file
            ("reason", pa.string()),
            ("row", pa.string()),  # JSON of the row as delivered (or the raw line)
            ("created_at", _ts),
        ]
    ),
    "scores": pa.schema(
        [
            ("id", pa.string()),
            ("sample_id", pa.string()),
            ("reward_model_id", pa.string()),
            ("score", pa.float64()),
        ]
    ),
    "reward_models": pa.schema(
        [
            ("id", pa.string()),
            ("iteration", pa.int64()),
            ("criterion", pa.string()),
            ("uri", pa.string()),
            ("backbone", pa.string()),
            ("parents", pa.string()),  # JSON list of ids
            ("data_mix", pa.string()),  # JSON: mix counts, seed, SQL, ids hash and file
            ("metrics", pa.string()),  # JSON: accuracy per test set, bucket; the gate
            ("promoted", pa.bool_()),  # replaced the current model of its kind
            ("decision", pa.string()),  # why (the promotion gate)
            ("created_at", _ts),
        ]
    ),
    "policies": pa.schema(
        [
            ("id", pa.string()),
            ("iteration", pa.int64()),
            ("uri", pa.string()),
            ("parent_id", pa.string()),
            ("method", pa.string()),  # base | rejection_sampling
            ("reward_model_id", pa.string()),  # the helpfulness reward model
            ("safety_reward_model_id", pa.string()),
            ("training_data", pa.string()),  # JSON: sample ids of the fine-tuning pool
            ("metrics", pa.string()),
            ("created_at", _ts),
        ]
    ),
    "iterations": pa.schema(
        [
            ("id", pa.string()),
            ("iteration", pa.int64()),
            ("policy_in", pa.string()),
            ("policy_out", pa.string()),  # the candidate trained this iteration
            ("reward_model_id", pa.string()),  # the helpfulness reward model
            ("safety_reward_model_id", pa.string()),
            ("batch_id", pa.string()),
            ("promoted", pa.bool_()),
            ("decision", pa.string()),  # why promoted or rolled back
            ("metrics", pa.string()),
            ("report_uri", pa.string()),
            ("created_at", _ts),
        ]
    ),
    # one row per item of a suite (or held-out prompt) a policy answered, with its verdict
    # against the other policy when there was one; the leaderboard is fitted on these
    "evaluations": pa.schema(
        [
            ("id", pa.string()),  # content_id(run_id, suite, item_id)
            ("run_id", pa.string()),  # one `flywheel evaluate` or one evaluate stage
            ("suite", pa.string()),  # mt-bench | alpaca-eval | xstest | advbench | heldout
            ("item_id", pa.string()),  # the item's id within its suite
            ("category", pa.string()),  # MT-bench category, XSTest type, AlpacaEval dataset
            ("policy_id", pa.string()),
            ("against_id", pa.string()),  # NULL when the suite was run without an opponent
            ("iteration", pa.int64()),  # NULL outside the weekly loop
            ("prompt", pa.string()),  # JSON list of the user turns
            ("answer", pa.string()),  # JSON list of the policy's answers, one per turn
            ("against_answer", pa.string()),  # JSON list, or NULL
            ("judge", pa.string()),  # the judge's key; NULL when nothing was compared
            ("verdict", pa.string()),  # a (the policy won) | b (the other did) | tie | NULL
            ("flipped", pa.bool_()),  # the two orders disagreed (an LLM judge)
            ("refusal", pa.string()),  # compliance | full_refusal | partial_refusal
            ("against_refusal", pa.string()),
            ("metrics", pa.string()),  # JSON: scores, lengths, per-suite extras
            ("created_at", _ts),
        ]
    ),
    # the verdict cache: a pair judged once per judge, whoever asks again
    "verdicts": pa.schema(
        [
            ("id", pa.string()),  # content_id(judge key, prompt, reference, answer a, answer b)
            ("judge", pa.string()),
            ("verdict", pa.string()),  # a | b | tie, after both orders
            ("flipped", pa.bool_()),
            ("detail", pa.string()),  # JSON: each order's raw verdict, scores
            ("created_at", _ts),
        ]
    ),
    # one row per `flywheel judge-agreement` run: how far a judge agrees with people
    "judge_agreement": pa.schema(
        [
            ("id", pa.string()),
            ("judge", pa.string()),  # the judge's key
            ("source", pa.string()),  # the comparison file(s) it was scored on
            ("pairs", pa.int64()),
            ("agreement", pa.float64()),  # ties count half
            ("agreement_no_ties", pa.float64()),  # on the pairs the judge did not tie
            ("flip_rate", pa.float64()),
            ("metrics", pa.string()),  # JSON: by criterion, intervals
            ("created_at", _ts),
        ]
    ),
}

TABLES = tuple(SCHEMAS)


def content_id(*parts) -> str:
    """A short stable hash of JSON-serialisable parts: the row key of every table."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
