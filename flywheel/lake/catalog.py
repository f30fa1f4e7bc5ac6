"""DuckDB over the lake: one view per table, and the `flywheel status` report.

DuckDB is the query engine, not a second source of truth: every view reads the complete Parquet
parts the manifests list. On S3 the lake's fsspec filesystem is registered with DuckDB, so no
`httpfs` extension is needed.
"""

from __future__ import annotations

import json

import duckdb

from flywheel.lake.schemas import SCHEMAS
from flywheel.lake.store import Lake


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if not lake.local:
        con.register_filesystem(lake.fs)
    for table in SCHEMAS:
        manifests = lake.manifests(table)
        if manifests:
            rows = sum(m.get("rows") or 0 for m in manifests)
            sql = _view_sql(lake.files(table, manifests), rows)
            con.execute(f"CREATE VIEW _{table}_parts AS {sql}")
            have = {r[0] for r in con.execute(f"DESCRIBE _{table}_parts").fetchall()}
            # columns added to a table after its parts were written read as NULL
            cols = ", ".join(
                f.name if f.name in have else f"NULL::{_DUCK_TYPES[str(f.type)]} AS {f.name}"
                for f in SCHEMAS[table])
            con.execute(f"CREATE VIEW {table} AS SELECT {cols} FROM _{table}_parts")
        else:
            con.register(f"_{table}_empty", SCHEMAS[table].empty_table())
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}_empty")
    return con


_DUCK_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN",
               "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}

# Below this many rows DISTINCT ON over every column is cheap (at most 0.3 s, even with
# 900-character texts) and reads each part once, the cheapest on S3 (a part read is a few
# requests); above it, reading the ids apart first pays.
SMALL_TABLE_ROWS = 50_000


def _view_sql(files: list[str], rows: int) -> str:
    """One row per id over a table's parts. A part never repeats an id (Lake.write_table), so
    one part is read as it is; across parts, two writers racing may both have written a row.
    In a large table only the ids seen twice go through DISTINCT ON: carrying every column of
    every row through it costs 1.3 s per 200k rows of 900-character texts."""
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    scan = f"read_parquet([{listing}], union_by_name=true)"
    if len(files) == 1:
        return f"SELECT * FROM {scan}"
    if rows < SMALL_TABLE_ROWS:
        return f"SELECT DISTINCT ON (id) * FROM {scan}"
    return f"""WITH parts AS NOT MATERIALIZED (SELECT * FROM {scan}),
      twice AS (SELECT id FROM parts GROUP BY id HAVING count(*) > 1)
    SELECT * FROM parts ANTI JOIN twice USING (id)
    UNION ALL SELECT DISTINCT ON (id) * FROM (SELECT * FROM parts SEMI JOIN twice USING (id))"""


def _records(con, sql: str) -> list[dict]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


# The models in use, as the loop picks them (flywheel.reward.retrain.current_models and
# flywheel.stages.common.current_policy; the lake package reads its tables, not those modules):
# per criterion the latest promoted reward model, and the policy the next iteration starts from,
# the last iteration's candidate if it was promoted, else the policy it started from (no
# iteration yet: the newest base policy).
IN_USE_REWARD_MODELS = """SELECT arg_max(id, (created_at, id)) FROM reward_models
    WHERE promoted GROUP BY criterion"""
POLICY_IN_USE = """SELECT coalesce(
    (SELECT CASE WHEN promoted THEN policy_out ELSE policy_in END FROM iterations
     ORDER BY iteration DESC LIMIT 1),
    (SELECT id FROM policies WHERE method = 'base' ORDER BY created_at DESC, id DESC LIMIT 1))"""


def status(lake: Lake) -> dict:
    """Iterations, batches, reward models and policies with their lineage, as plain data;
    `in_use` marks the reward model of each criterion and the policy the next iteration
    uses."""
    con = connect(lake)
    out = {
        "lake": lake.uri,
        "counts": {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in SCHEMAS},
        "iterations": _records(
            con,
            "SELECT iteration, policy_in, policy_out, reward_model_id, "
            "safety_reward_model_id, batch_id, promoted, "
            "decision, metrics, report_uri FROM iterations ORDER BY iteration",
        ),
        "batches": _records(
            con,
            "SELECT batch_id, id AS delivery_id, filename, iteration, source, delivered, "
            "accepted, new, rejected, heldout, status FROM batches ORDER BY created_at",
        ),
        "reward_models": _records(
            con,
            "SELECT id, iteration, criterion, backbone, uri, parents, "
            "json_extract(data_mix, '$.counts') AS mix_counts, metrics, promoted, decision, "
            f"id IN ({IN_USE_REWARD_MODELS}) AS in_use "
            "FROM reward_models ORDER BY iteration, criterion",
        ),
        "policies": _records(
            con,
            "SELECT p.id, p.iteration, p.method, p.parent_id, p.reward_model_id, "
            "p.safety_reward_model_id, p.uri, "
            "coalesce(i.promoted, p.method = 'base') AS promoted, p.metrics, "
            f"p.id IS NOT DISTINCT FROM ({POLICY_IN_USE}) AS in_use "
            "FROM policies p LEFT JOIN iterations i ON i.policy_out = p.id "
            "ORDER BY p.iteration",
        ),
    }
    for section in ("iterations", "reward_models", "policies"):
        for row in out[section]:
            for key in ("metrics", "parents", "mix_counts"):
                if isinstance(row.get(key), str):
                    row[key] = json.loads(row[key])
    return out


def _num(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def format_status(report: dict) -> str:
    lines = [f"lake: {report['lake']}"]
    counts = ", ".join(f"{t} {n}" for t, n in report["counts"].items())
    lines.append(f"rows: {counts}")
    lines.append("")
    lines.append("iterations:")
    if not report["iterations"]:
        lines.append("  (none yet: run `flywheel demo` or `flywheel run`)")
    for it in report["iterations"]:
        m = it["metrics"] or {}
        verdict = "promoted" if it["promoted"] else "rolled back"
        lines.append(
            f"  #{it['iteration']}: {it['policy_in']} -> {it['policy_out']} {verdict}; "
            f"win rate {_num(m.get('win_rate'))} (helpful prompts "
            f"{_num(m.get('win_rate_helpful'))}), harmful answered "
            f"{_num(m.get('harmful_answered_new'))}; {it['decision']}"
        )
    lines.append("batches:")
    for b in report["batches"]:
        when = f"iteration {b['iteration']}" if b["iteration"] is not None else "delivered"
        lines.append(
            f"  {b['batch_id']} ({b['filename']}, {when}, {b['source']}): {b['accepted']} "
            f"accepted ({b['new']} new, {b['heldout']} held out), {b['rejected']} rejected of "
            f"{b['delivered']}"
        )
    lines.append("reward models (* in use):")
    for r in report["reward_models"]:
        m = r["metrics"] or {}
        acc = (m.get("in_house") or m).get("accuracy")
        flag = "*" if r["in_use"] else " "
        lines.append(
            f" {flag}{r['id']} iteration {r['iteration']} {r['criterion']} on {r['backbone']}: "
            f"in-house test accuracy {_num(acc, 3)}, mix {r['mix_counts']}"
            + (f"; {r['decision']}" if r["decision"] else "")
        )
    lines.append("policies (* where the next iteration starts):")
    for p in report["policies"]:
        flag = "*" if p["in_use"] else " "
        lines.append(
            f" {flag}{p['id']} iteration {p['iteration']} {p['method']} from "
            f"{p['parent_id'] or '-'} with RMs {p['reward_model_id'] or '-'} (helpfulness), "
            f"{p['safety_reward_model_id'] or '-'} (safety)"
        )
    return "\n".join(lines)
