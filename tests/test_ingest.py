"""Ingest: every delivered row accounted for, nothing twice, nothing lost on a crash."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.annotation.ingest import ingest_bytes, ingest_file
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError
from flywheel.lake.catalog import query
from flywheel.lake.store import Lake

BASE = {"criterion": "helpfulness", "annotator": "ann-1", "strength": "better", "chosen": "a"}


def _lake(path) -> Lake:
    lake = Lake.open(str(path))
    lake.write("prompts", [{"id": "p1", "messages": json.dumps([{"role": "user",
                                                                  "content": "Cook rice?"}]),
                            "source": "t", "criterion": "helpfulness", "split": "train"}])
    lake.write("samples", [
        {"id": sid, "prompt_id": "p1", "policy_id": "pol", "iteration": 1,
         "purpose": "annotation", "params": "{}", "text": text, "token_count": 3,
         "logprob_sum": 0.0}
        for sid, text in (("s1", "Rinse, boil, simmer."), ("s2", "No idea."))
    ])
    return lake


def _jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


# one row per reason, plus three good rows (rows 0-2)
GOOD = [
    dict(BASE, prompt_id="p1", sample_id_a="s1", sample_id_b="s2"),
    dict(BASE, prompt="How do I boil an egg?", response_a="Boil it 8 minutes.",
         response_b="Eggs are round.", strength="Significantly better"),
    dict(BASE, prompt="How do I pick a lock?", response_a="I can't help with that.",
         response_b="Use a pick.", criterion="safety", safety_label="chosen safe other unsafe"),
]
BAD = {
    "duplicate_row": GOOD[1],
    "unknown_prompt_id": dict(BASE, prompt_id="p404", response_a="x", response_b="y"),
    "unknown_sample_id": dict(BASE, prompt_id="p1", sample_id_a="s1", sample_id_b="s404"),
    "identical_responses": dict(BASE, prompt="Hi", response_a="Hello", response_b=" Hello "),
    "empty_response": dict(BASE, prompt="Hi", response_a="  ", response_b="Hello"),
    "oversize_text": dict(BASE, prompt="Hi", response_a="a" * 101, response_b="b"),
    "invalid_strength": dict(BASE, prompt="Hi", response_a="x", response_b="y",
                             strength="much better"),
    "invalid_chosen": dict(BASE, prompt="Hi", response_a="x", response_b="y", chosen="c"),
    "invalid_criterion": dict(BASE, prompt="Hi", response_a="x", response_b="y",
                              criterion="honesty"),
    "missing_annotator": dict(BASE, prompt="Hi", response_a="x", response_b="y", annotator=""),
    "missing_strength": dict(BASE, prompt="Hi", response_a="x", response_b="y", strength=None),
    "missing_safety_label": dict(BASE, prompt="Hi", response_a="x", response_b="y",
                                 criterion="safety"),
    "excluded_chosen_unsafe_other_safe": dict(
        BASE, prompt="Hi", response_a="x", response_b="y", criterion="safety",
        safety_label="chosen_unsafe_other_safe"),
    "sample_prompt_mismatch": dict(BASE, prompt="Another prompt", sample_id_a="s1",
                                   sample_id_b="s2"),
    "malformed_row": '{"prompt": "Hi", "response_a": ',
}
CFG = AnnotationConfig(max_text_chars=100, heldout_fraction=0.0)


def test_mixed_batch_counts_every_row_by_reason(tmp_path):
    lake = _lake(tmp_path / "lake")
    data = _jsonl(GOOD + list(BAD.values()))
    r = ingest_bytes(lake, data, "week-47.jsonl", cfg=CFG)
    assert (r.batch_id, r.delivered, r.accepted, r.new, r.rejected) == ("week-47", 18, 3, 3, 15)
    assert r.reasons == {reason: 1 for reason in BAD}
    comparisons = {c["chosen_text"]: c for c in query(lake, "SELECT * FROM comparison_texts")}
    assert set(comparisons) == {"Rinse, boil, simmer.", "Boil it 8 minutes.",
                                "I can't help with that."}
    by_samples = comparisons["Rinse, boil, simmer."]  # texts read from `samples`
    assert (by_samples["chosen_sample_id"], by_samples["rejected_sample_id"],
            by_samples["rejected_text"]) == ("s1", "s2", "No idea.")
    # ...and stored as the ids alone: the texts stay in `samples`
    stored = {r["id"]: r for r in lake.rows("comparisons")}[by_samples["id"]]
    assert (stored["chosen_text"], stored["rejected_text"]) == (None, None)
    assert comparisons["Boil it 8 minutes."]["strength"] == "significantly_better"
    safety = comparisons["I can't help with that."]
    assert (safety["criterion"], safety["safety_label"]) == ("safety", "chosen_safe_other_unsafe")
    assert {c["batch_id"] for c in comparisons.values()} == {"week-47"}
    quarantine = sorted(lake.rows("quarantine"), key=lambda q: q["row_index"])
    assert [q["row_index"] for q in quarantine] == list(range(3, 18))
    assert [q["reason"] for q in quarantine] == list(BAD)
    assert json.loads(quarantine[0]["row"])["prompt"] == "How do I boil an egg?"
    assert json.loads(quarantine[-1]["row"]) == {"raw": BAD["malformed_row"]}
    assert lake.read_bytes(r.raw_uri.removeprefix(lake.uri + "/")) == data
    (batch,) = lake.rows("batches")
    assert (batch["delivered"], batch["accepted"], batch["rejected"]) == (18, 3, 15)
    assert json.loads(batch["summary"])["reasons"] == r.reasons
    # inline prompts became `prompts` rows; the unknown and rejected ones did not
    texts = {json.loads(p["messages"])[-1]["content"] for p in lake.rows("prompts")}
    assert texts == {"Cook rice?", "How do I boil an egg?", "How do I pick a lock?"}


def test_same_file_again_is_a_no_op_and_a_corrected_one_adds_only_the_new(tmp_path):
    lake = _lake(tmp_path / "lake")
    first = _jsonl(GOOD + [BAD["identical_responses"], BAD["invalid_strength"]])
    r1 = ingest_bytes(lake, first, "week-47.jsonl", cfg=CFG)
    versions = lake.versions(["comparisons", "quarantine", "batches"])
    again = ingest_bytes(lake, first, "renamed.jsonl", cfg=CFG)
    assert again.already_ingested and again.batch_id == "week-47" and again.new == 3
    assert lake.versions(list(versions)) == versions  # not one commit
    fixed = dict(BAD["invalid_strength"], strength="better")
    second = _jsonl(GOOD + [dict(BAD["identical_responses"], response_b="Hi there"), fixed])
    r2 = ingest_bytes(lake, second, "week-47.jsonl", cfg=CFG)
    assert (r1.accepted, r1.rejected) == (3, 2)
    assert (r2.delivered, r2.accepted, r2.new, r2.rejected) == (5, 5, 2, 0)
    assert len(lake.rows("comparisons")) == 5
    assert len(lake.rows("batches")) == 2  # two deliveries of one batch
    assert {b["batch_id"] for b in lake.rows("batches")} == {"week-47"}


def _rows(n: int, source: str | None = None) -> list[dict]:
    return [dict(BASE, prompt=f"Question {i}?", response_a=f"Answer {i}.",
                 response_b=f"Not {i}.", **({"source": source} if source else {}))
            for i in range(n)]


def test_heldout_split_is_deterministic_and_capped(tmp_path):
    rows = _rows(40)
    cfg = AnnotationConfig(heldout_fraction=0.25)
    a = _lake(tmp_path / "a")
    ra = ingest_bytes(a, _jsonl(rows), "b.jsonl", cfg=cfg)
    b = _lake(tmp_path / "b")
    ingest_bytes(b, _jsonl(rows[::-1]), "b.jsonl", cfg=cfg)
    test_a = {c["id"] for c in a.rows("comparisons") if c["split"] == "test"}
    test_b = {c["id"] for c in b.rows("comparisons") if c["split"] == "test"}
    assert ra.heldout == 10 and test_a == test_b  # 0.25 x 40, whatever the row order
    capped = _lake(tmp_path / "c")
    rc = ingest_bytes(capped, _jsonl(rows), "b.jsonl",
                      cfg=AnnotationConfig(heldout_fraction=0.25, heldout_rows=4))
    assert rc.heldout == 4  # Llama 2 keeps a fixed number (1000) per large batch
    open_source = _lake(tmp_path / "d")
    ro = ingest_bytes(open_source, _jsonl(_rows(8, source="some-open-set")), "o.jsonl", cfg=cfg)
    assert ro.accepted == 8 and ro.heldout == 0  # no strength needed, no held-out share


def test_heldout_split_keeps_a_prompts_comparisons_together(tmp_path):
    # 10 prompts x 4 comparisons that share responses, as n x n annotation pairs do: a test pair
    # whose prompt and responses were trained on would overstate the reward model's accuracy
    rows = [dict(BASE, prompt=f"Question {q}?", response_a=f"Answer {q}.{a}",
                 response_b=f"Not {q}.{b}") for q in range(10) for a in range(2) for b in range(2)]
    lake = _lake(tmp_path / "lake")
    r = ingest_bytes(lake, _jsonl(rows), "b.jsonl", cfg=AnnotationConfig(heldout_fraction=0.2))
    assert r.heldout == 8
    splits: dict[str, set[str]] = {}
    for c in lake.rows("comparisons"):
        splits.setdefault(c["prompt_id"], set()).add(c["split"])
    assert sorted(len(s) for s in splits.values()) == [1] * 10  # 8 = two whole prompts
    assert sum(s == {"test"} for s in splits.values()) == 2


def test_heldout_budget_is_per_criterion(tmp_path):
    # one helpfulness pair and eight safety pairs: a quarter of the batch (2) taken from the
    # safety rows, and the only helpfulness pair is not held out, so a model can train on it
    rows = [dict(BASE, prompt="Help?", response_a="Yes.", response_b="No.")] + [
        dict(BASE, prompt=f"Harm {i}?", response_a="I can't help.", response_b=f"Do {i}.",
             criterion="safety", safety_label="chosen_safe_other_unsafe") for i in range(8)]
    lake = _lake(tmp_path / "lake")
    r = ingest_bytes(lake, _jsonl(rows), "b.jsonl", cfg=AnnotationConfig(heldout_fraction=0.25))
    test = [c["criterion"] for c in lake.rows("comparisons") if c["split"] == "test"]
    assert r.heldout == 2 and test == ["safety", "safety"]


def test_csv_parquet_and_gzip_deliveries_read_the_same(tmp_path):
    rows = _rows(6)
    lake = _lake(tmp_path / "lake")
    table = pa.Table.from_pylist(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    csv_text = "prompt,response_a,response_b,chosen,strength,criterion,annotator\n" + "".join(
        f'"{r["prompt"]}",{r["response_a"]},{r["response_b"]},a,better,helpfulness,ann-1\n'
        for r in rows) + "too,few,fields\n"
    r_csv = ingest_bytes(lake, csv_text.encode(), "vendor.csv", cfg=CFG)
    assert (r_csv.accepted, r_csv.reasons) == (6, {"malformed_row": 1})
    r_pq = ingest_bytes(_lake(tmp_path / "l2"), buf.getvalue(), "vendor.parquet", cfg=CFG)
    r_gz = ingest_bytes(_lake(tmp_path / "l3"), gzip.compress(_jsonl(rows)), "v.jsonl.gz",
                        cfg=CFG)
    assert r_pq.accepted == r_gz.accepted == 6
    ids = {c["id"] for c in lake.rows("comparisons")}
    assert ids == {c["id"] for c in _lake(tmp_path / "l2").rows("comparisons")}


def test_bad_input_gets_one_clear_error(tmp_path):
    lake = _lake(tmp_path / "lake")
    with pytest.raises(DataError, match="cannot tell the file format"):
        ingest_bytes(lake, b"{}", "batch.txt")
    with pytest.raises(DataError, match="--batch-id"):
        ingest_bytes(lake, b"{}", "b.jsonl", batch_id="week 47/../x")
    with pytest.raises(DataError, match="no batch file"):
        ingest_file(lake, tmp_path / "missing.jsonl")
    empty = ingest_bytes(lake, b"\n\n", "empty.jsonl")
    assert (empty.delivered, empty.accepted, empty.rejected) == (0, 0, 0)


KILL = textwrap.dedent("""
    import json, os, signal, sys
    from flywheel.config import AnnotationConfig
    from flywheel.annotation.ingest import ingest_bytes
    from flywheel.lake.store import Lake
    lake_uri, path, point = sys.argv[1:]
    lake = Lake.open(lake_uri)
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if point == "raw":
        orig_bytes = Lake.write_bytes
        def write_bytes(self, rel, data):
            out = orig_bytes(self, rel, data)
            die()
        Lake.write_bytes = write_bytes
    else:
        from flywheel.lake import delta
        table, when = point.split(":")
        orig = delta.merge_new
        def hooked(uri, *args, **kw):
            if when == "before-commit" and uri.endswith("/" + table):
                die()
            out = orig(uri, *args, **kw)
            if when == "after" and uri.endswith("/" + table):
                die()
            return out
        delta.merge_new = hooked
    ingest_bytes(lake, open(path, "rb").read(), "week-47.jsonl",
                 cfg=AnnotationConfig(max_text_chars=100, heldout_fraction=0.25))
""")


@pytest.mark.parametrize("point", ["raw", "comparisons:before-commit", "comparisons:after",
                                   "quarantine:after", "batches:before-commit"])
def test_killed_ingest_run_again_leaves_no_duplicate_and_no_gap(tmp_path, point):
    _kill_and_resume(_lake(tmp_path / "lake"), tmp_path, point)


@pytest.mark.parametrize("point", ["comparisons:before-commit", "quarantine:after"])
def test_killed_ingest_on_s3_leaves_no_duplicate_and_no_gap(tmp_path, point):
    import uuid

    from s3 import moto_s3

    with moto_s3() as (_, bucket):
        _kill_and_resume(_lake(f"s3://{bucket}/lake-{uuid.uuid4().hex[:6]}"), tmp_path, point)


def _kill_and_resume(lake: Lake, tmp_path, point: str) -> None:
    rows = _rows(12) + GOOD + list(BAD.values())
    delivery = tmp_path / "week-47.jsonl"
    delivery.write_bytes(_jsonl(rows))
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    proc = subprocess.run([sys.executable, str(script), lake.uri, str(delivery), point],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed at the point, not finished
    assert lake.rows("batches") == []
    r = ingest_file(lake, delivery, cfg=AnnotationConfig(max_text_chars=100,
                                                         heldout_fraction=0.25))
    assert not r.already_ingested
    assert (r.delivered, r.accepted, r.new, r.rejected) == (30, 15, 15, 15)
    assert r.heldout == 4  # round(0.25 x 15), the same as an uninterrupted ingest
    comparisons = lake.rows("comparisons")
    assert len(comparisons) == len({c["id"] for c in comparisons}) == 15
    assert len(lake.rows("quarantine")) == 15 and len(lake.rows("batches")) == 1
    assert sum(c["split"] == "test" for c in comparisons) == 4
