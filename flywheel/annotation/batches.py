"""Correcting a batch after it landed, without deleting anything.

    retract   the batch's deliveries get status `retracted`: their rows leave the `comparisons`
              and `quarantine` views, so every later mix and test set; the `batches` rows and
              the delivered files stay
    restore   undoes a retraction
    resplit   moves the batch's comparisons to train or test

Each is one Delta commit whose lineage names the action, the batch and the reason, so
`Lake.history` says who moved what and why, and the version before stays readable
(`Lake.read(table, version=...)`); a reward model trained before keeps the versions it read.
`rejected_rows` lists a batch's quarantined rows with what each reason means.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from flywheel.annotation.reasons import blamed_field, help_for
from flywheel.errors import DataError
from flywheel.lake.catalog import connect
from flywheel.lake.store import Lake

COMPLETE, RETRACTED = "complete", "retracted"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class BatchChange:
    batch_id: str
    action: str  # retract | restore | resplit
    deliveries: int  # deliveries whose status changed (resplit: those whose rows moved)
    comparisons: int  # comparisons that left or came back into view, or moved
    unchanged: int  # comparisons already as asked (resplit), or deliveries already so
    version: int | None  # the version of the table written; None when nothing changed
    split: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.action == "resplit":
            return (f"batch {self.batch_id}: {_n(self.comparisons, 'comparison')} moved to "
                    f"{self.split}, {self.unchanged} {'was' if self.unchanged == 1 else 'were'} "
                    f"{self.split} already"
                    + (f" (comparisons version {self.version})" if self.version is not None
                       else "; nothing to do"))
        if not self.deliveries:
            return (f"batch {self.batch_id} is {self._state()} already "
                    f"({_n(self.unchanged, 'delivery')}); nothing to do")
        moved = "left" if self.action == "retract" else "came back to"
        return (f"batch {self.batch_id} {self._state()}: {_n(self.deliveries, 'delivery')}, "
                f"{_n(self.comparisons, 'comparison')} {moved} the mixes and test sets "
                f"(batches version {self.version})")

    def _state(self) -> str:
        return "retracted" if self.action == "retract" else "restored"


def deliveries(lake: Lake, batch_id: str) -> list[dict]:
    """The `batches` rows of a batch (one per delivered file); DataError naming the known
    batches when there is none."""
    rows = lake.rows("batches")
    mine = [r for r in rows if r["batch_id"] == batch_id]
    if not mine:
        known = sorted({r["batch_id"] for r in rows})
        listed = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20
                                          else "")
        raise DataError(f"no batch {batch_id!r} in lake {lake.uri}; its batches are: "
                        f"{listed or 'none yet (flywheel ingest or flywheel import)'}")
    return mine


def retract(lake: Lake, batch_id: str, reason: str | None = None) -> BatchChange:
    """Take a batch's rows out of every later mix and test set; `restore` brings them back."""
    return _set_status(lake, batch_id, COMPLETE, RETRACTED, "retract", reason)


def restore(lake: Lake, batch_id: str, reason: str | None = None) -> BatchChange:
    """Undo `retract`."""
    return _set_status(lake, batch_id, RETRACTED, COMPLETE, "restore", reason)


def _set_status(lake, batch_id, before, after, action, reason) -> BatchChange:
    found = deliveries(lake, batch_id)
    ids = [d["id"] for d in found if d["status"] == before]
    if not ids:
        return BatchChange(batch_id, action, 0, 0, len(found), None)
    rows = _count(lake, "all_comparisons", ids)
    lineage = {"action": action, "batch": batch_id, "deliveries": ids, "comparisons": rows,
               "reason": reason}
    changed = lake.update("batches", f"batch_id = {_sql(batch_id)} AND status = {_sql(before)}",
                          {"status": after}, lineage)
    return BatchChange(batch_id, action, changed, rows, len(found) - changed,
                       lake.version("batches"))


def set_deliveries(lake: Lake, batch_id: str, delivery_ids: list[str], status: str,
                   reason: str) -> int:
    """Retract (status `retracted`) or restore (`complete`) some deliveries of a batch, not all:
    a source's earlier deliveries that its latest one supersedes. One commit, its lineage
    naming them and the reason; returns how many changed."""
    if status not in (COMPLETE, RETRACTED) or not delivery_ids:
        raise ValueError(f"set_deliveries: status {status!r}, {len(delivery_ids)} deliveries")
    action = "retract" if status == RETRACTED else "restore"
    lineage = {"action": action, "batch": batch_id, "deliveries": sorted(delivery_ids),
               "reason": reason}
    return lake.update("batches", f"batch_id = {_sql(batch_id)} AND id IN "
                       f"({', '.join(map(_sql, delivery_ids))}) AND status <> {_sql(status)}",
                       {"status": status}, lineage)


def resplit(lake: Lake, batch_id: str, split: str, reason: str | None = None) -> BatchChange:
    """Move the visible comparisons of a batch to `split` (train or test)."""
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {' or '.join(SPLITS)}")
    found = deliveries(lake, batch_id)
    ids = [d["id"] for d in found if d["status"] == COMPLETE]
    if not ids:
        raise DataError(f"batch {batch_id} is retracted: its rows are in no mix or test set; "
                        f"bring it back first: flywheel batch restore {batch_id}")
    rows = _count(lake, "comparisons", ids)
    moving = _count(lake, "comparisons", ids, f"split IS DISTINCT FROM {_sql(split)}")
    if not moving:
        return BatchChange(batch_id, "resplit", 0, 0, rows, None, split)
    lineage = {"action": "resplit", "batch": batch_id, "split": split, "deliveries": ids,
               "comparisons": moving, "reason": reason}
    predicate = (f"delivery_id IN ({', '.join(map(_sql, ids))}) "
                 f"AND (split IS NULL OR split <> {_sql(split)})")
    moved = lake.update("comparisons", predicate, {"split": split}, lineage)
    return BatchChange(batch_id, "resplit", len(ids), moved, rows - moved,
                       lake.version("comparisons"), split)


def _count(lake: Lake, view: str, delivery_ids: list[str], where: str = "true") -> int:
    con = connect(lake)
    try:
        return con.execute(f"SELECT count(*) FROM {view} WHERE delivery_id IN "
                           f"(SELECT unnest($ids)) AND {where}", {"ids": delivery_ids}
                           ).fetchone()[0]
    finally:
        con.close()


def _n(count: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{count} {noun if count == 1 else plural}"


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# quarantined rows ------------------------------------------------------------------------------
def rejected_rows(lake: Lake, batch_id: str, limit: int | None = None) -> dict:
    """A batch's rejected rows (a retracted batch's too), first `limit` of them: each with its
    line (row_index + 1), delivery file, reason, the field it fails on and its value, and what
    the reason means and how to fix it."""
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of rows; got {limit}")
    found = {d["id"]: d for d in deliveries(lake, batch_id)}
    con = connect(lake)
    try:
        total, = con.execute("SELECT count(*) FROM all_quarantine WHERE delivery_id IN "
                             "(SELECT unnest($ids))", {"ids": list(found)}).fetchone()
        cur = con.execute(
            "SELECT delivery_id, row_index, reason, row FROM all_quarantine "
            "WHERE delivery_id IN (SELECT unnest($ids)) ORDER BY delivery_id, row_index"
            + ("" if limit is None else f" LIMIT {int(limit)}"), {"ids": list(found)})
        rows = cur.fetchall()
    finally:
        con.close()
    out = []
    for delivery_id, row_index, reason, row in rows:
        delivery = found[delivery_id]
        limits = json.loads(delivery["summary"] or "{}").get("config")
        field, value = blamed_field(reason, row, limits=limits)
        out.append({"file": delivery["filename"], "line": row_index + 1, "reason": reason,
                    "field": field, "value": value, "help": help_for(reason),
                    "status": delivery["status"]})
    return {"batch_id": batch_id, "rejected": total, "shown": len(out),
            "delivered": sum(d["delivered"] for d in found.values()),
            "retracted": all(d["status"] == RETRACTED for d in found.values()), "rows": out}


def format_rejected(report: dict) -> str:
    head = (f"batch {report['batch_id']}: {report['rejected']} of {report['delivered']} "
            "delivered rows rejected" + (" (the batch is retracted)" if report["retracted"]
                                         else ""))
    lines = [head]
    files = {r["file"] for r in report["rows"]}
    for r in report["rows"]:
        where = f"{r['file']} line {r['line']}" if len(files) > 1 else f"line {r['line']}"
        lines.append(f"  {where}: {r['reason']}, {r['field']} = {r['value']}")
        lines.append(f"      {r['help']}")
    if report["shown"] < report["rejected"]:
        lines.append(f"  ... {report['rejected'] - report['shown']} more; --limit N shows more")
    return "\n".join(lines)
