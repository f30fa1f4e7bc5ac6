"""DuckDB over the lake: one view per table, and the `flywheel status` report.

DuckDB is the query engine, not a second source of truth: every view scans the data files of
one Delta snapshot of its table, taken when the connection is made (`lake_versions` lists
them), so a query sees each table as of one commit. On S3 the lake's fsspec filesystem is
registered with DuckDB, so no extension is needed.

A delivery is visible all at once or not at all: `comparisons` and `quarantine` show the rows of
deliveries whose `batches` row is committed with status `complete` (a delivery cut short before
its batches row, or a retracted one, shows nothing); `all_comparisons` and `all_quarantine` are
every row written. A comparison side delivered by its sample id stores the id alone;
`comparison_texts` is `comparisons` with those texts read from `samples`.
"""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa

from flywheel.lake.lineage import location, policy_location
from flywheel.lake.schemas import SCHEMAS
from flywheel.lake.store import Lake

# the tables whose rows belong to a delivery, shown once the delivery is complete
DELIVERED = ("comparisons", "quarantine")
VISIBLE_DELIVERIES = "SELECT id FROM batches WHERE status = 'complete'"


def connect(lake: Lake, versions: dict[str, int | None] | None = None
            ) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view per table (at `versions`, default the latest)."""
    con = duckdb.connect()
    if not lake.local:
        con.register_filesystem(lake.fs)
    taken = []
    for table in SCHEMAS:
        name = f"all_{table}" if table in DELIVERED else table
        files, version = lake.files(table, (versions or {}).get(table))
        taken.append((table, version))
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW _{table}_files AS SELECT * FROM "
                        f"read_parquet([{listing}], union_by_name=true)")
            have = {r[0] for r in con.execute(f"DESCRIBE _{table}_files").fetchall()}
            # columns added to a table after its files were written read as NULL
            cols = ", ".join(
                f.name if f.name in have else f"NULL::{_DUCK_TYPES[str(f.type)]} AS {f.name}"
                for f in SCHEMAS[table])
            con.execute(f"CREATE VIEW {name} AS SELECT {cols} FROM _{table}_files")
        else:
            con.register(f"_{table}_empty", SCHEMAS[table].empty_table())
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{table}_empty")
    for table in DELIVERED:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM all_{table} "
                    f"WHERE delivery_id IN ({VISIBLE_DELIVERIES})")
    # a side delivered by its sample id is stored as the id: its text is the sample's
    con.execute("""CREATE VIEW comparison_texts AS
        SELECT c.* REPLACE (coalesce(c.chosen_text, sc.text) AS chosen_text,
                            coalesce(c.rejected_text, sr.text) AS rejected_text)
        FROM comparisons c
        LEFT JOIN samples sc ON c.chosen_text IS NULL AND sc.id = c.chosen_sample_id
        LEFT JOIN samples sr ON c.rejected_text IS NULL AND sr.id = c.rejected_sample_id""")
    con.register("_lake_versions", pa.table({
        "table_name": [t for t, _ in taken],
        "version": pa.array([v for _, v in taken], pa.int64())}))
    con.execute("CREATE VIEW lake_versions AS SELECT * FROM _lake_versions")
    return con


def versions_of(con: duckdb.DuckDBPyConnection) -> dict[str, int | None]:
    """The table versions a connection reads: what a model trained on its rows records."""
    return dict(con.execute("SELECT table_name, version FROM lake_versions").fetchall())


_DUCK_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "double": "DOUBLE", "bool": "BOOLEAN",
               "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}


def query(lake_or_con: Lake | duckdb.DuckDBPyConnection, sql: str,
          params: dict | None = None) -> list[dict]:
    """The rows of a query over the lake's views, as dicts of the values `Lake.rows` gives: how
    a stage reads only the rows it uses of a large table. `params` fill `$name` placeholders
    (a list fills `id IN (SELECT unnest($ids))`). Given a Lake, the query runs on a
    connection of its own over the latest snapshot."""
    own = isinstance(lake_or_con, Lake)
    con = connect(lake_or_con) if own else lake_or_con
    try:
        return con.sql(sql, params=params).to_arrow_table().to_pylist()
    finally:
        if own:
            con.close()


def rows_by_id(lake_or_con: Lake | duckdb.DuckDBPyConnection, table: str, ids,
               columns: list[str] | None = None) -> dict[str, dict]:
    """The rows of `table` with these ids, by id (with `columns` and the id only, default
    every column): what a stage reads of a large table. The ids are a registered Arrow table
    DuckDB semi-joins on, which is faster than a list parameter; naming the columns a stage
    uses spares converting the others to Python (a timestamp costs more than a text)."""
    if table not in SCHEMAS:
        raise ValueError(f"unknown table {table!r}")
    names = SCHEMAS[table].names
    unknown = [c for c in columns or () if c not in names]
    if unknown:
        raise ValueError(f"{table} has no columns {unknown}; its columns are {names}")
    cols = ", ".join(["id", *(c for c in columns if c != "id")]) if columns else "*"
    own = isinstance(lake_or_con, Lake)
    con = connect(lake_or_con) if own else lake_or_con
    con.register("_rows_by_id", pa.table({"id": pa.array(sorted(set(ids)), pa.string())}))
    try:
        return {r["id"]: r for r in query(
            con, f"SELECT {cols} FROM {table} WHERE id IN (SELECT id FROM _rows_by_id)")}
    finally:
        con.unregister("_rows_by_id")
        if own:
            con.close()


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
        "counts": {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in SCHEMAS},
        "iterations": query(
            con,
            "SELECT iteration, policy_in, policy_out, reward_model_id, "
            "safety_reward_model_id, batch_id, promoted, "
            "decision, metrics, report_uri FROM iterations ORDER BY iteration",
        ),
        "batches": query(
            con,
            "SELECT batch_id, id AS delivery_id, filename, iteration, source, delivered, "
            "accepted, new, rejected, heldout, status FROM batches ORDER BY created_at",
        ),
        "reward_models": query(
            con,
            "SELECT id, iteration, criterion, backbone, uri, parents, "
            "json_extract(data_mix, '$.counts') AS mix_counts, metrics, promoted, decision, "
            f"id IN ({IN_USE_REWARD_MODELS}) AS in_use "
            "FROM reward_models ORDER BY iteration, criterion",
        ),
        "policies": query(
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
    # stored locations are relative to the lake: shown as URIs of the lake read
    for it in out["iterations"]:
        it["report_uri"] = location(lake, it["report_uri"])
    for rm in out["reward_models"]:
        rm["uri"] = location(lake, rm["uri"])
    for p in out["policies"]:
        p["uri"] = policy_location(lake, p)
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
            + ("" if b["status"] == "complete" else
               f"; {b['status']}: its rows are in no mix or test set")
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
