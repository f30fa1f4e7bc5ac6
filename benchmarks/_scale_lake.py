"""A lake at Llama 2's scale for bench_lake_scale.py, written twice from the same Arrow tables:
as Delta Lake tables (`Lake.write_table`) and in the earlier format (`legacy.write_table`).

At scale 1: 100k prompts (10k of them held out), 50 iterations, and per iteration 100k samples:
20k annotation pairs (two samples of one train prompt, from the latest and the previous policy),
10 rejection-sampling draws for each of 5k train prompts, and the candidate's greedy answers on
the 10k held-out prompts (the base policy's answers come with iteration 1). A policy, two reward
models and an iteration row per iteration; each policy's `training_data` names the best draw of
each of its 5k prompts, as rejection sampling writes it. The delivery of the 1M annotation pairs
(sample-id form) and 400k open-source comparisons with inline texts complete the 1.4M
comparisons. Texts are about 200 characters; everything is vectorised (numpy, Arrow, DuckDB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _synthetic import corpus, ids, joined_lines, texts

from flywheel.config import FlywheelConfig
from flywheel.lake import legacy
from flywheel.lake.store import Lake

ITERATIONS = 50
K = 10  # rejection-sampling draws per prompt
TEXT_CHARS = 200
OPEN_SOURCE = ["anthropic-hh-rlhf/harmless-base", "anthropic-hh-rlhf/helpful-base",
               "ultrafeedback-binarized"]
STRENGTHS = ["significantly better", "better", "slightly better", "negligibly better / unsure"]
SAFETY = ["both safe", "both unsafe", "chosen safe other unsafe"]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Sizes:
    prompts: int
    heldout: int  # held-out prompts: the evaluation answers per iteration
    pairs: int  # annotation pairs per iteration
    rs_prompts: int  # rejection-sampling prompts per iteration
    open_source: int

    @classmethod
    def at(cls, scale: float) -> Sizes:
        def n(x: float, least: int) -> int:
            return max(least, round(x * scale))
        return cls(prompts=n(100_000, 60), heldout=n(10_000, 5), pairs=n(20_000, 20),
                   rs_prompts=n(5_000, 5), open_source=n(400_000, 30))

    @property
    def per_iteration(self) -> int:
        return 2 * self.pairs + K * self.rs_prompts + self.heldout

    @property
    def samples(self) -> int:  # the base policy's held-out answers come with iteration 1
        return ITERATIONS * self.per_iteration + self.heldout


class Both:
    """Writes each table to the Delta lake and the earlier-format lake; seconds spent in each."""

    def __init__(self, delta: Lake, old: Lake):
        self.delta, self.old = delta, old
        self.seconds = {"delta": 0.0, "earlier": 0.0}

    def write(self, table: str, data: pa.Table, lineage: dict | None = None) -> None:
        import time
        t0 = time.perf_counter()
        self.delta.write_table(table, data, lineage)
        t1 = time.perf_counter()
        legacy.write_table(self.old, table, data, lineage)
        self.seconds["delta"] += t1 - t0
        self.seconds["earlier"] += time.perf_counter() - t1


def policy_ids() -> list[str]:
    """Policy of iteration i at index i; index 0 is the base policy."""
    return ids("policy", ITERATIONS + 1).to_pylist()


def sample_ids(i: int, size: Sizes) -> pa.Array:
    return ids(f"s{i}-", size.per_iteration + (size.heldout if i == 1 else 0))


def layout(i: int, size: Sizes) -> dict[str, slice]:
    """Where each purpose's rows sit among iteration i's samples."""
    a, r = 2 * size.pairs, 2 * size.pairs + K * size.rs_prompts
    return {"annotation": slice(0, a), "rejection": slice(a, r),
            "evaluation": slice(r, size.per_iteration), "base answers":
            slice(size.per_iteration, size.per_iteration + (size.heldout if i == 1 else 0))}


def _params(temperature: float) -> str:
    s = FlywheelConfig().sampling  # greedy answers match what evaluation looks for
    return json.dumps({"backend": s.backend, "temperature": temperature, "top_p": s.top_p,
                       "max_new_tokens": s.max_new_tokens, "seed": s.seed, "n": 1})


def prompts_table(rng, text_corpus, size: Sizes) -> pa.Table:
    pids = ids("p", size.prompts)
    text = texts(rng, text_corpus, size.prompts, 125, pids)
    crit = np.where(rng.random(size.prompts) < 0.7, "helpfulness", "safety")
    split = np.where(np.arange(size.prompts) >= size.prompts - size.heldout, "heldout", "train")
    return pa.table({
        "id": pids, "messages": pc.binary_join_element_wise(
            '[{"role": "user", "content": "', text, '"}]', ""),
        "source": pa.array(["bench"] * size.prompts), "criterion": pa.array(crit),
        "split": pa.array(split)})


def samples_table(rng, text_corpus, i: int, size: Sizes, pids: pa.Array,
                  pols: list[str]) -> pa.Table:
    sid = sample_ids(i, size)
    n, train = len(sid), size.prompts - size.heldout
    where = layout(i, size)
    prompt_idx = np.concatenate([
        np.repeat((i * size.pairs + np.arange(size.pairs)) % train, 2),
        np.repeat((i * size.rs_prompts + np.arange(size.rs_prompts)) % train, K),
        train + np.arange(size.heldout), train + np.arange(size.heldout)])[:n]
    policy = np.empty(n, dtype=object)
    policy[where["annotation"]] = np.tile([pols[i - 1], pols[max(0, i - 2)]], size.pairs)
    policy[where["rejection"]] = pols[i - 1]
    policy[where["evaluation"]] = pols[i]
    policy[where["base answers"]] = pols[0]
    purpose = np.empty(n, dtype=object)
    params = np.empty(n, dtype=object)
    for name, temperature in (("annotation", 0.7), ("rejection", 0.8), ("evaluation", 0.0),
                              ("base answers", 0.0)):
        purpose[where[name]] = "evaluation" if name == "base answers" else name
        params[where[name]] = _params(temperature)
    return pa.table({
        "id": sid, "prompt_id": pc.take(pids, pa.array(prompt_idx)),
        "policy_id": pa.array(policy, pa.string()), "iteration": pa.array(np.full(n, i)),
        "purpose": pa.array(purpose, pa.string()), "params": pa.array(params, pa.string()),
        "text": texts(rng, text_corpus, n, TEXT_CHARS, sid),
        "token_count": pa.array(rng.integers(20, 97, n)),
        "logprob_sum": pa.array(-rng.random(n) * 100),
        "created_at": pa.array([T0 + timedelta(days=7 * i)] * n, pa.timestamp("us", "UTC"))})


def best_of_iteration(i: int, size: Sizes) -> list[str]:
    """The first draw of each rejection-sampling prompt stands for its best."""
    rows = layout(i, size)["rejection"]
    return sample_ids(i, size)[rows.start:rows.stop:K].to_pylist()


def models_tables(size: Sizes, pols: list[str]) -> dict[str, pa.Table]:
    rms = ids("rm", 2 * ITERATIONS).to_pylist()
    when = [T0 + timedelta(days=7 * i, hours=1) for i in range(ITERATIONS + 1)]
    policies = [{"id": pols[0], "iteration": 0, "uri": "builtin:tiny-policy", "method": "base",
                 "training_data": "{}", "metrics": "{}", "created_at": T0}]
    reward_models, iterations = [], []
    for i in range(1, ITERATIONS + 1):
        h, s = rms[2 * i - 2], rms[2 * i - 1]
        for rm, crit in ((h, "helpfulness"), (s, "safety")):
            reward_models.append({
                "id": rm, "iteration": i, "criterion": crit, "uri": f"artifacts/reward_models/{rm}",
                "backbone": "bench", "parents": json.dumps([f"iteration-{i:04d}"]),
                "data_mix": json.dumps({"counts": {"total": 1000 * i}, "seed": 0,
                                        "batches": [f"iteration-{i:04d}"]}),
                "metrics": json.dumps({"accuracy": 0.6}), "promoted": True,
                "decision": "better on the in-house test set", "created_at": when[i]})
        policies.append({
            "id": pols[i], "iteration": i, "uri": f"artifacts/policies/{pols[i]}",
            "parent_id": pols[i - 1], "method": "rejection_sampling", "reward_model_id": h,
            "safety_reward_model_id": s,
            "training_data": json.dumps({"best": best_of_iteration(i, size)}),
            "metrics": "{}", "created_at": when[i]})
        iterations.append({
            "id": f"iteration-{i}", "iteration": i, "policy_in": pols[i - 1],
            "policy_out": pols[i], "reward_model_id": h, "safety_reward_model_id": s,
            "batch_id": f"iteration-{i:04d}", "promoted": True, "decision": "won",
            "metrics": json.dumps({"win_rate": 0.55}),
            "report_uri": f"reports/iteration-{i:04d}.md", "created_at": when[i]})
    from flywheel.lake.schemas import SCHEMAS
    return {name: pa.Table.from_pylist([{k: r.get(k) for k in SCHEMAS[name].names}
                                        for r in rows], schema=SCHEMAS[name])
            for name, rows in (("policies", policies), ("reward_models", reward_models),
                               ("iterations", iterations))}


def write_pool_file(delta: Lake, size: Sizes) -> None:
    """The pool file of iteration ITERATIONS - 1's policy, as its rejection-sampling stage
    writes it: the best of every iteration before ITERATIONS, all fine-tuned on."""
    import tempfile

    from flywheel.lake.catalog import rows_by_id
    from flywheel.stages.pool import POOL_SAMPLE_COLUMNS, write_pool

    best = [i for it in range(1, ITERATIONS) for i in best_of_iteration(it, size)]
    rows = rows_by_id(delta, "samples", best, POOL_SAMPLE_COLUMNS)
    with tempfile.TemporaryDirectory() as tmp:
        write_pool(tmp, rows, set(rows))
        delta.put_artifact("policies", policy_ids()[ITERATIONS - 1], tmp, {"bench": True})


def build(delta: Lake, old: Lake, size: Sizes, seed: int, commits: int = 10,
          progress=print) -> tuple[Both, pa.Table]:
    """Writes prompts, samples (in `commits` commits), policies, reward models and iterations
    to both lakes; returns the writer (its seconds) and the prompts table."""
    rng = np.random.default_rng(seed)
    text_corpus = corpus(rng)
    both = Both(delta, old)
    prompts = prompts_table(rng, text_corpus, size)
    both.write("prompts", prompts, {"source": "bench"})
    pols = policy_ids()
    per_commit = -(-ITERATIONS // commits)
    for first in range(1, ITERATIONS + 1, per_commit):
        its = range(first, min(ITERATIONS, first + per_commit - 1) + 1)
        part = pa.concat_tables([samples_table(rng, text_corpus, i, size, prompts["id"], pols)
                                 for i in its])
        both.write("samples", part, {"stage": "bench", "iterations": [its[0], its[-1]]})
        progress(f"  samples of iterations {its[0]}-{its[-1]}: {part.num_rows:,} rows; "
                 f"Delta {both.seconds['delta']:.0f} s, earlier {both.seconds['earlier']:.0f} s "
                 "so far")
    for name, table in models_tables(size, pols).items():
        both.write(name, table, {"stage": "bench"})
    write_pool_file(delta, size)
    return both, prompts


def delivery(rng, size: Sizes, prompts: pa.Table) -> bytes:
    """JSONL of every annotation pair of the 50 iterations in the sample-id form: prompt id,
    both sample ids and the labels."""
    pid, sa, sb = [], [], []
    train = size.prompts - size.heldout
    for i in range(1, ITERATIONS + 1):
        sid = sample_ids(i, size)
        pairs = layout(i, size)["annotation"]
        sa.append(sid[pairs.start:pairs.stop:2])
        sb.append(sid[pairs.start + 1:pairs.stop:2])
        pid.append((i * size.pairs + np.arange(size.pairs)) % train)
    idx = pa.array(np.concatenate(pid))
    n = len(idx)
    crit = pc.take(prompts["criterion"], idx)
    safety = np.array(SAFETY, dtype=object)[rng.integers(0, 3, n)]
    table = pa.table({
        "prompt_id": pc.take(prompts["id"], idx),
        "sample_id_a": pa.chunked_array(sa), "sample_id_b": pa.chunked_array(sb),
        "chosen": pa.array(np.where(rng.random(n) < 0.5, "a", "b")),
        "strength": pa.array(np.array(STRENGTHS, dtype=object)[rng.integers(0, 4, n)]),
        "criterion": crit,
        "safety_label": pc.if_else(pc.equal(crit, "safety"), pa.array(safety, pa.string()),
                                   pa.nulls(n, pa.string())),
        "annotator": pa.array(np.char.add("annotator-", rng.integers(0, 40, n).astype(str))),
        "row_index": pa.array(np.arange(n))})
    con = duckdb.connect()
    con.register("d", table)
    fields = ", ".join(f"{c} := {c}" for c in table.column_names if c != "row_index")
    lines = con.sql(f"SELECT to_json(struct_pack({fields}))::VARCHAR AS line FROM d "
                    "ORDER BY row_index").to_arrow_table().column("line")
    return joined_lines(lines)


def open_source(rng, size: Sizes) -> list[tuple[pa.Table, dict]]:
    """Three open-source sets with inline texts, 2 % test rows, each with its batches row."""
    text_corpus = corpus(rng)
    out = []
    for k, source in enumerate(OPEN_SOURCE):
        n = size.open_source // len(OPEN_SOURCE) + (k < size.open_source % len(OPEN_SOURCE))
        cid = ids(f"os{k}-", n)
        delivery_id = f"import-{k}"
        crit = "safety" if "harmless" in source else "helpfulness"
        part = pa.table({
            "id": cid, "prompt_id": ids(f"os{k}p", n),
            "chosen_text": texts(rng, text_corpus, n, TEXT_CHARS, cid),
            "rejected_text": texts(rng, text_corpus, n, TEXT_CHARS, cid),
            "criterion": pa.array([crit] * n), "annotator": pa.array([source] * n),
            "batch_id": pa.array([source] * n), "delivery_id": pa.array([delivery_id] * n),
            "source": pa.array([source] * n),
            "split": pa.array(np.where(rng.random(n) < 0.02, "test", "train"))})
        batch = {"id": delivery_id, "batch_id": source, "source": source, "delivered": n,
                 "accepted": n, "new": n, "rejected": 0, "heldout": 0, "status": "complete",
                 "filename": f"{k}.parquet", "raw_uri": f"raw/{k}/{k}.parquet",
                 "checksum": str(k), "summary": "{}"}
        out.append((part, batch))
    return out
