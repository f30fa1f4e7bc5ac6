"""Annotator quality as markdown: the table `flywheel annotators` prints and the iteration
report's "Annotators" section (the batch's overlap and gold, per annotator and per criterion, and
whom the reward-model mixes left out)."""

from __future__ import annotations

import json

from flywheel.annotation.annotators import report
from flywheel.lake.catalog import connect
from flywheel.lake.store import Lake

COLUMNS = ("annotator", "ratings", "gold", "gold accuracy", "overlap items", "compared",
           "agreement", "Cohen's kappa", "strength kappa", "unsure", "median s")
NOTE = ("Agreement and Cohen's kappa: on the choice, against the consensus of the others on "
        "each overlap item (the majority; compared: the items where the others did not tie). "
        "Strength kappa: linear-weighted kappa on the choice and its "
        "strength together (8 ordered levels, one response much better ... the other much "
        "better). Unsure: share at the weakest level. Median s: n/a where the tool reports no "
        "time. Gold labels are quarantined (`gold_pair`), never trained on.")


def _num(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def table_markdown(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['annotator']} | {r['ratings']} | {r['gold']} | "
                     f"{_num(r['gold_accuracy'])} | {r['overlap']} | {r['compared']} | "
                     f"{_num(r['agreement'])} | "
                     f"{_num(r['kappa'])} | {_num(r['strength_kappa'])} | {_num(r['unsure'])} | "
                     f"{_num(r['median_seconds'], 1)} |")
    return lines


def agreement_line(name: str, a: dict) -> str:
    by = "; ".join(f"{c} {_num(m['fleiss_kappa'])} on {m['items']}"
                   for c, m in a["by_criterion"].items())
    return (f"{name}: {a['items']} overlap items, agreement {_num(a['agreement'])}, Fleiss' "
            f"kappa {_num(a['fleiss_kappa'])}" + (f" (by criterion: {by})" if by else "")
            + f", strength kappa {_num(a['strength_kappa'])}; gold accuracy "
            f"{_num(a['gold_accuracy'])}.")


def report_markdown(out: dict) -> list[str]:
    """`flywheel annotators`' text: the table, the batch(es)' agreement, the notes."""
    lines = table_markdown(out["annotators"]) + [""]
    if out["batch"] is not None:
        lines.append(agreement_line(f"Batch `{out['batch']}`", out["agreement"]))
    else:
        lines += [agreement_line(f"Batch `{b}`", a) for b, a in out["batches"].items()]
    return lines + ["", NOTE, ""]


def left_out_lines(lake: Lake, iteration: int) -> list[str]:
    """Who the reward models trained in `iteration` left out, and why."""
    lines = []
    for rm in sorted(lake.rows("reward_models"), key=lambda r: r["criterion"]):
        if rm["iteration"] != iteration:
            continue
        gone = json.loads(rm["data_mix"] or "{}").get("left_out_annotators") or {}
        lines += [f"- the {rm['criterion']} reward model's mix left out `{who}`: {why}"
                  for who, why in gone.items()]
    return lines


def annotators_markdown(lake: Lake, batch_id: str | None, iteration: int) -> list[str]:
    """The report section; nothing when the batch had one annotator and no gold."""
    if not batch_id:
        return []
    with connect(lake) as con:
        out = report(con, lake, batch_id)
    if len(out["annotators"]) < 2 and not any(r["gold"] for r in out["annotators"]):
        return []
    return ["## Annotators", "", f"Batch `{batch_id}`:", "", *table_markdown(out["annotators"]),
            "", agreement_line("Agreement", out["agreement"]), *left_out_lines(lake, iteration),
            "", NOTE, ""]
