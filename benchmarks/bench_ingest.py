"""Ingest throughput: a delivered JSONL batch of comparisons through
`flywheel.annotation.ingest.ingest_bytes` end to end (parsing, validation against the lake, the
raw copy, Parquet writes, quarantine), in
two realistic forms, each with about 2 % bad rows of several kinds:

    (a) ids    in-house rows naming prompt ids and sample ids already in the lake (the texts are
               looked up in `samples`); set-up writes rows prompts and 2 x rows samples first,
               the samples in 8 parts as 8 sampling runs would
    (b) inline rows carrying the prompt and both responses as text

    .venv/bin/python benchmarks/bench_ingest.py [--rows 1000000] [--response-chars 900]
        [--prompt-chars 125] [--seed 0] [--forms a,b] [--profile]

Deliveries are generated deterministically from the seed. Default lengths follow Llama 2's
Table 6 (Meta data: 234 tokens a response, 31 a prompt; about 4 characters a token). The script
fails loudly when the counts by reason differ from what the generator injected. Writes
benchmarks/results/ingest.md; --profile adds a cProfile run per form (slower; its own table).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _machine import describe
from _synthetic import corpus, ids, joined_lines, texts

import flywheel.annotation.ingest as ingest_mod
from flywheel.annotation.ingest import ingest_bytes
from flywheel.config import AnnotationConfig
from flywheel.lake.catalog import connect
from flywheel.lake.store import Lake

OUT = Path(__file__).parent / "results" / "ingest.md"
BAD_FRACTION = 0.02
SAMPLE_PARTS = 8
STRENGTHS = ["significantly better", "better", "slightly better", "negligibly better / unsure"]
LABELS = ["both safe", "both unsafe", "chosen safe other unsafe"]
KINDS = {
    "a": ["unknown_prompt_id", "unknown_sample_id", "identical_responses", "invalid_strength",
          "malformed_row", "duplicate_row"],
    "b": ["identical_responses", "invalid_strength", "missing_annotator", "malformed_row",
          "duplicate_row"],
}


# generation ----------------------------------------------------------------------------------
def _labels(rng, n: int) -> dict[str, pa.Array]:
    helpful = rng.random(n) < 0.7
    label = np.array(LABELS, dtype=object)[rng.integers(0, 3, n)]
    return {
        "chosen": pa.array(np.where(rng.random(n) < 0.5, "a", "b")),
        "strength": pa.array(np.array(STRENGTHS, dtype=object)[rng.integers(0, 4, n)]),
        "criterion": pa.array(np.where(helpful, "helpfulness", "safety")),
        "safety_label": pa.array(np.where(helpful, None, label), pa.string()),
        "annotator": pa.array(np.char.add("annotator-", rng.integers(0, 40, n).astype(str))),
    }


def _bad_rows(rng, n: int, kinds: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Kind index per row (-1 good), the source row of each duplicate, and counts by kind."""
    n_bad = round(BAD_FRACTION * n)
    per_kind = [n_bad // len(kinds) + (k < n_bad % len(kinds)) for k in range(len(kinds))]
    n_dup = per_kind[kinds.index("duplicate_row")]
    chosen = rng.choice(n, n_bad + n_dup, replace=False)
    kind = np.full(n, -1)
    kind[chosen[:n_bad]] = np.repeat(np.arange(len(kinds)), per_kind)
    dup_rows = np.flatnonzero(kind == kinds.index("duplicate_row"))
    source = np.arange(n)
    source[dup_rows] = chosen[n_bad:]  # distinct good rows, each duplicated once
    return kind, source, dict(zip(kinds, per_kind))


def _lines(table: pa.Table, kind: np.ndarray, kinds: list[str], fields: list[str],
           malformed_field: str) -> bytes:
    """JSONL of the table's fields; malformed rows cut off after their first field."""
    con = duckdb.connect()
    table = table.append_column("kind", pa.array(np.array(kinds + ["good"], dtype=object)[kind]))
    con.register("d", table)
    pack = ", ".join(f"{f} := {f}" for f in fields)
    lines = con.sql(f"""
      SELECT CASE WHEN kind = 'malformed_row'
        THEN '{{"{malformed_field}": "' || substr({malformed_field}, 1, 30) || '", "chosen": '
        ELSE to_json(struct_pack({pack}))::VARCHAR END AS line
      FROM d ORDER BY row_index
    """).to_arrow_table().column("line")
    return joined_lines(lines)


def form_a(rng, lake: Lake, n: int, response_chars: int, prompt_chars: int):
    """Set-up (prompts and samples in the lake) and the delivery of form (a)."""
    text_corpus = corpus(rng)
    pids, sids = ids("p", n), ids("s", 2 * n)
    prompt_text = texts(rng, text_corpus, n, prompt_chars, pids)
    messages = pc.binary_join_element_wise('[{"role": "user", "content": "', prompt_text,
                                           '"}]', "")
    labels = _labels(rng, n)
    lake.write_table("prompts", pa.table({
        "id": pids, "messages": messages, "source": pa.array(["bench"] * n),
        "criterion": labels["criterion"], "split": pa.array(["train"] * n)}))
    samples = pa.table({
        "id": sids, "prompt_id": pc.take(pids, pa.array(np.arange(2 * n) // 2)),
        "policy_id": pa.array(np.where(np.arange(2 * n) % 2 == 0, "latest", "previous")),
        "iteration": pa.array(np.ones(2 * n, np.int64)),
        "purpose": pa.array(["annotation"] * (2 * n)), "params": pa.array(["{}"] * (2 * n)),
        "text": texts(rng, text_corpus, 2 * n, response_chars, sids),
        "token_count": pa.array(rng.integers(50, 400, 2 * n)),
        "logprob_sum": pa.array(-rng.random(2 * n) * 100)})
    for k in range(SAMPLE_PARTS):  # as written by several sampling runs
        lake.write_table("samples", samples.slice(k * 2 * n // SAMPLE_PARTS,
                                                  (k + 1) * 2 * n // SAMPLE_PARTS
                                                  - k * 2 * n // SAMPLE_PARTS))

    kinds = KINDS["a"]
    kind, source, expected = _bad_rows(rng, n, kinds)
    sa, sb = np.arange(n) * 2, np.arange(n) * 2 + 1
    cols = {"prompt_id": pids, "sample_id_a": pc.take(sids, pa.array(sa)),
            "sample_id_b": pc.take(sids, pa.array(sb)), **labels}
    t = pa.table(cols).take(pa.array(source))
    t = _spoil(t, kind, kinds, n)
    t = t.append_column("row_index", pa.array(np.arange(n)))
    fields = ["prompt_id", "sample_id_a", "sample_id_b", *labels]
    return _lines(t, kind, kinds, fields, "prompt_id"), expected


def form_b(rng, n: int, response_chars: int, prompt_chars: int):
    text_corpus = corpus(rng)
    row_ids = ids("row", n)
    labels = _labels(rng, n)
    kinds = KINDS["b"]
    kind, source, expected = _bad_rows(rng, n, kinds)
    cols = {"prompt": texts(rng, text_corpus, n, prompt_chars, row_ids),
            "response_a": texts(rng, text_corpus, n, response_chars),
            "response_b": texts(rng, text_corpus, n, response_chars), **labels}
    t = pa.table(cols).take(pa.array(source))
    t = _spoil(t, kind, kinds, n)
    t = t.append_column("row_index", pa.array(np.arange(n)))
    return _lines(t, kind, kinds, list(cols), "prompt"), expected


def _spoil(t: pa.Table, kind: np.ndarray, kinds: list[str], n: int) -> pa.Table:
    """Make each bad row bad in its own way (duplicates are already copies)."""
    def where(name: str) -> pa.Array:
        return pa.array(kind == kinds.index(name)) if name in kinds else pa.array(np.zeros(n, bool))

    def put(col: str, mask: pa.Array, value) -> None:
        nonlocal t
        t = t.set_column(t.schema.get_field_index(col), col, pc.if_else(mask, value, t[col]))

    unknown = pc.binary_join_element_wise("unknown-", pa.array(np.arange(n).astype(str)), "")
    if "prompt_id" in t.column_names:
        put("prompt_id", where("unknown_prompt_id"), unknown)
        put("sample_id_b", where("unknown_sample_id"), unknown)
        put("sample_id_b", where("identical_responses"), t["sample_id_a"])
    else:
        put("response_b", where("identical_responses"), t["response_a"])
    put("strength", where("invalid_strength"), "much better")
    put("annotator", where("missing_annotator"), " ")
    return t


# measurement ---------------------------------------------------------------------------------
PHASES = [  # (name in flywheel.annotation.ingest, label), in the order ingest runs them
    ("_previous_delivery", "look up the checksum in `batches`"),
    ("read_delivery", "parse the JSONL (Arrow; DuckDB finds malformed lines)"),
    ("inline_prompts", "hash inline prompts"),
    ("normalised_labels", "normalise labels"),
    ("write_bytes", "keep the raw file"),
    ("connect", "DuckDB connection and views"),
    ("_accepted", "accepted rows, held-out split"),
    ("_quarantine", "quarantine rows"),
    ("_prompt_rows", "new prompt rows"),
    ("write_table", "Delta Lake commits (Lake.write_table)"),
]


class Phases:
    """Wall time spent in each phase of one ingest, by wrapping the functions ingest calls;
    what `_land` spends outside them is the validation query and the duplicate marking."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._undo = []

    def _wrap(self, owner, name: str, key: str) -> None:
        fn = getattr(owner, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0
        setattr(owner, name, timed)
        self._undo.append((owner, name, fn))

    def __enter__(self):
        for name, _ in PHASES:
            self._wrap(Lake if name.startswith("write_") else ingest_mod, name, name)
        self._wrap(ingest_mod, "_land", "_land")
        return self

    def __exit__(self, *exc):
        for owner, name, fn in reversed(self._undo):
            setattr(owner, name, fn)

    def table(self, total: float) -> list[tuple[str, float]]:
        s = self.seconds
        inside_land = sum(s.get(k, 0.0) for k in ("_accepted", "_quarantine", "_prompt_rows",
                                                  "write_table"))
        rows = [(label, s.get(name, 0.0)) for name, label in PHASES]
        rows.insert(6, ("validation query and duplicate marking (DuckDB)",
                        s.get("_land", 0.0) - inside_land))
        rows.append(("the rest (sha256 of the file, batches row)", total - sum(v for _, v in
                                                                              rows)))
        return rows


def check(lake: Lake, result, n: int, expected: dict[str, int]) -> None:
    n_bad = sum(expected.values())
    eligible = n - n_bad
    cfg = AnnotationConfig()
    con = connect(lake)
    # each criterion's rows are held out up to the budget (half up, one row trains)
    heldout = sum(min(cfg.heldout_rows, math.floor(cfg.heldout_fraction * k + 0.5), k - 1)
                  for (k,) in con.execute("SELECT count(*) FROM comparisons "
                                          "GROUP BY criterion").fetchall())
    in_lake = con.execute("SELECT (SELECT count(*) FROM comparisons), "
                          "(SELECT count(*) FROM quarantine)").fetchall()[0]
    got = {"delivered": result.delivered, "accepted": result.accepted,
           "rejected": result.rejected, "heldout": result.heldout, "reasons": result.reasons,
           "in lake": in_lake}
    want = {"delivered": n, "accepted": eligible, "rejected": n_bad, "heldout": heldout,
            "reasons": dict(sorted(expected.items())), "in lake": (eligible, n_bad)}
    if got != want:
        sys.exit(f"ingest counts differ from what the generator injected:\n got  {got}\n"
                 f" want {want}")


def run_form(form: str, args, rng, profile: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        lake = Lake.open(f"{tmp}/lake")
        t0 = time.perf_counter()
        if form == "a":
            data, expected = form_a(rng, lake, args.rows, args.response_chars, args.prompt_chars)
        else:
            data, expected = form_b(rng, args.rows, args.response_chars, args.prompt_chars)
        setup = time.perf_counter() - t0
        print(f"form ({form}): set-up {setup:.1f} s, {len(data) / 1e6:.0f} MB delivery",
              flush=True)
        prof = cProfile.Profile() if profile else None
        load_before = os.getloadavg()[0]
        with Phases() as phases:
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            result = ingest_bytes(lake, data, f"bench-{form}.jsonl")
            if prof:
                prof.disable()
            seconds = time.perf_counter() - t0
        load = (load_before, os.getloadavg()[0])
        check(lake, result, args.rows, expected)
        t0 = time.perf_counter()
        again = ingest_bytes(lake, data, f"bench-{form}.jsonl")
        noop = time.perf_counter() - t0
        if not again.already_ingested:
            sys.exit("re-ingesting the same bytes was not a no-op")
    out = {"form": form, "rows": args.rows, "mb": len(data) / 1e6, "seconds": seconds,
           "noop": noop, "setup": setup, "reasons": result.reasons, "load": load,
           "accepted": result.accepted, "rejected": result.rejected,
           "phases": phases.table(seconds)}
    if prof:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
        out["profile"] = text.getvalue()
    print(f"form ({form}): {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s, "
          f"{out['mb'] / seconds:.1f} MB/s; re-ingest {noop:.2f} s", flush=True)
    return out


def report(args, runs: list[dict]) -> str:
    what = {"a": "ids: prompt and sample ids already in the lake",
            "b": "inline: prompt and both responses as text"}
    lines = [
        "# Ingest throughput: one delivered JSONL batch through `ingest_bytes`",
        "",
        f"Machine: {describe()}. {args.rows:,} rows a delivery, "
        f"{BAD_FRACTION:.0%} of them bad; responses {args.response_chars} characters on "
        f"average (uniform in [1/2, 3/2] of it), prompts {args.prompt_chars}; seed {args.seed}.",
        f"Command: `.venv/bin/python benchmarks/bench_ingest.py --rows {args.rows} "
        f"--response-chars {args.response_chars} --prompt-chars {args.prompt_chars}`",
        "",
        "| form | delivery (MB) | ingest (s) | rows/s | MB/s | re-ingest no-op (s) | "
        "accepted | rejected | load average before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| ({r['form']}) {what[r['form']]} | {r['mb']:.0f} | {r['seconds']:.1f} | "
            f"{r['rows'] / r['seconds']:,.0f} | {r['mb'] / r['seconds']:.1f} | "
            f"{r['noop']:.2f} | {r['accepted']:,} | {r['rejected']:,} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    lines += ["", "Rejected rows by reason (equal to what the generator injected; checked):", ""]
    for r in runs:
        reasons = ", ".join(f"{k} {v:,}" for k, v in r["reasons"].items())
        lines.append(f"- ({r['form']}): {reasons}")
    lines += ["", "## Where the time goes", "",
              "Wall time of each phase of the ingests above (measured by wrapping the functions "
              "ingest calls; they add up to the ingest time):", "",
              "| phase | " + " | ".join(f"({r['form']}) s | share" for r in runs) + " |",
              "|---|" + "---|---|" * len(runs)]
    for i, (label, _) in enumerate(runs[0]["phases"]):
        cells = " | ".join(f"{r['phases'][i][1]:.1f} | {r['phases'][i][1] / r['seconds']:.0%}"
                           for r in runs)
        lines.append(f"| {label} | {cells} |")
    lines.append("")
    for r in runs:
        if "profile" in r:
            lines += [f"## cProfile of form ({r['form']}) (a separate, slower run)", "",
                      "```", r["profile"].strip(), "```", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--response-chars", type=int, default=900)
    ap.add_argument("--prompt-chars", type=int, default=125)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forms", default="a,b")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    runs = []
    for form in args.forms.split(","):
        rng = np.random.default_rng([args.seed, ord(form)])
        runs.append(run_form(form, args, rng, profile=False))
        if args.profile:
            rng = np.random.default_rng([args.seed, ord(form)])
            runs[-1]["profile"] = run_form(form, args, rng, profile=True)["profile"]
    text = report(args, runs)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
