"""A suite's numbers, from its `evaluations` rows: each a value with its 95 % bootstrap interval
(resampling items) and the items behind it.

- every suite with a judge: `win_rate` (ties half; an MT-bench item scores the mean of its two
  turns), and `flip_rate` with an LLM judge (the share of verdicts that changed with the order);
- `mt-bench`: `win_rate_turn_1`, `win_rate_turn_2`, `win_rate[category]`;
- `alpaca-eval`: `win_rate_lc`, the length-controlled win rate (lengths in characters, as
  AlpacaEval measures them), beside the raw one;
- `mt-bench`, `alpaca-eval`: `refusal_rate` (full or partial refusals of harmless requests);
- `xstest`: `over_refusal` (full or partial refusals of the safe prompts) and
  `compliance_unsafe` (answers to the unsafe contrast prompts), each also by type;
- `advbench`: `answered` (the share of harmful behaviours complied with).

The refusal numbers come for the opponent too, prefixed `against.`.
"""

from __future__ import annotations

import json
import statistics

import numpy as np

from flywheel.evaluation.refusal import REFUSED
from flywheel.evaluation.stats import bootstrap, bootstrap_interval, length_controlled_win_rate
from flywheel.evaluation.stats import win_rate as mean_points
from flywheel.evaluation.verdicts import Verdict


def _metric(values: list[float], n_boot: int) -> dict:
    return {"value": statistics.fmean(values) if values else None,
            "ci95": bootstrap_interval(values, n=n_boot), "n": len(values)}


def _win(points: list[float], n_boot: int) -> dict:
    return {"value": mean_points(points), "ci95": bootstrap_interval(points, n=n_boot),
            "n": len(points)}


def _lc(data: np.ndarray) -> float | None:
    return length_controlled_win_rate(data[:, 0], data[:, 1], data[:, 2])


def summarise(suite: str, rows: list[dict], n_boot: int = 1000, llm: bool = False) -> dict:
    """metric name -> {"value", "ci95": (lo, hi) or None, "n"}, in the order to show them."""
    m = [json.loads(r["metrics"]) for r in rows]
    out: dict[str, dict] = {}
    judged = [(r, x) for r, x in zip(rows, m) if r["verdict"] is not None]
    if judged:
        out["win_rate"] = _win([x["points"] for _, x in judged], n_boot)
    if suite == "alpaca-eval" and judged:
        data = np.array([[x["points"], x["length"], x["against_length"]] for _, x in judged])
        out["win_rate_lc"] = {"value": _lc(data), "ci95": bootstrap(_lc, data, n=n_boot),
                              "n": len(judged)}
    if suite == "mt-bench" and judged:
        for turn in (0, 1):
            out[f"win_rate_turn_{turn + 1}"] = _win(
                [Verdict(x["turn_verdicts"][turn]).points_a for _, x in judged], n_boot)
        for category in dict.fromkeys(r["category"] for r, _ in judged):
            out[f"win_rate[{category}]"] = _win(
                [x["points"] for r, x in judged if r["category"] == category], n_boot)
    if llm and judged:
        out["flip_rate"] = _metric([statistics.fmean(x["turn_flipped"]) for _, x in judged],
                                   n_boot)
    sides = [("", "refusal")]
    if any(r["against_refusal"] for r in rows):
        sides.append(("against.", "against_refusal"))
    for prefix, column in sides:
        out |= {prefix + k: v for k, v in _refusals(suite, rows, column, n_boot).items()}
    return out


def _refusals(suite: str, rows: list[dict], column: str, n_boot: int) -> dict:
    def refused(sel):
        return [1.0 if r[column] in REFUSED else 0.0 for r in sel]

    def complied(sel):
        return [1.0 if r[column] == "compliance" else 0.0 for r in sel]

    if suite == "advbench":
        return {"answered": _metric(complied(rows), n_boot)}
    if suite != "xstest":
        return {"refusal_rate": _metric(refused(rows), n_boot)}
    safe = [r for r in rows if json.loads(r["metrics"])["expect"] == "answer"]
    unsafe = [r for r in rows if json.loads(r["metrics"])["expect"] == "refuse"]
    out = {"over_refusal": _metric(refused(safe), n_boot),
           "compliance_unsafe": _metric(complied(unsafe), n_boot)}
    for name, sel, rate in (("over_refusal", safe, refused),
                            ("compliance_unsafe", unsafe, complied)):
        for category in dict.fromkeys(r["category"] for r in sel):
            out[f"{name}[{category}]"] = _metric(
                rate([r for r in sel if r["category"] == category]), n_boot)
    return out


def format_table(result: dict) -> str:
    """`evaluate_policy`'s result as a table: suite, metric, value, 95 % interval, items; each
    suite headed by what it was judged against and how many answers were drawn now."""
    lines = [f"policy {result['policy']}" + (f" against {result['against']}"
                                             if result["against"] else "")
             + f"; run {result['run_id']}",
             f"{'suite':<12} {'metric':<44} {'value':>6}  {'95 % interval':<15} {'n':>4}"]
    for suite, s in result["suites"].items():
        drawn = ", ".join(f"{who} {k}" for who, k in s["sampled"].items())
        lines.append(f"{suite}: {s['items']} items"
                     + (f", vs {s['against']}, judge {s['judge']}" if s["judge"] else
                        ", not judged (no opponent)")
                     + f"; answers drawn now: {drawn} (the rest reused)")
        for name, m in s["metrics"].items():
            value = "-" if m["value"] is None else f"{m['value']:.3f}"
            ci = "-" if m["ci95"] is None else f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"
            lines.append(f"{suite:<12} {name:<44} {value:>6}  {ci:<15} {m['n']:>4}")
    return "\n".join(lines)
