"""The markdown report of one iteration: decision, metrics, stage times, reward-model accuracy by
strength bucket (Llama 2's Table 8 layout) and the reward-model gate, reward distributions and
links into the lake."""

from __future__ import annotations

import json

from flywheel.lake import Lake
from flywheel.schemas import SAFETY_LABELS, STRENGTHS


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _histogram(values: list[float], bins: int = 8, width: int = 30) -> list[str]:
    if not values:
        return ["(no values)"]
    lo, hi = min(values), max(values)
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / step))] += 1
    top = max(counts)
    return [f"{lo + i * step:+7.2f} | {'#' * round(width * c / top):<{width}} {c}"
            for i, c in enumerate(counts)]


BUCKETS = ("significantly better", "better", "slightly better", "negligibly better / unsure")


def table8_rows(reward_models: list[dict]) -> list[dict]:
    """Accuracy per preference strength, laid out like Table 8 of the Llama 2 paper: one row
    per reward model and test set (its own criterion's sets first), the four strength buckets,
    the average over all pairs, and the per-safety-label accuracies."""
    out = []
    for rm in reward_models:
        sets = json.loads(rm.get("metrics") or "{}").get("test_sets", {})
        kind = rm["criterion"]
        for name, m in sorted(sets.items(), key=lambda kv: (kv[1].get("criterion") != kind,
                                                              kv[0])):
            row = {"reward model": f"{kind} {rm['id']}", "test set": name}
            for level, header in zip(STRENGTHS, BUCKETS):
                row[header] = m.get("by_strength", {}).get(level, {}).get("accuracy")
            row["avg"] = m.get("accuracy")
            row["pairs"] = m.get("n", 0)
            for label in SAFETY_LABELS:
                row[label.replace("_", " ")] = m.get("by_safety_label", {}).get(
                    label, {}).get("accuracy")
            out.append(row)
    return out


def table8_markdown(reward_models: list[dict]) -> str:
    rows = table8_rows(reward_models)
    if not rows:
        return "(no test comparisons yet)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def gate_markdown(reward_models: list[dict]) -> str:
    """The promotion decision of each reward model, with the comparison per test set."""
    lines = []
    for rm in reward_models:
        gate = json.loads(rm.get("metrics") or "{}").get("gate", {})
        lines += [f"- **{rm['criterion']}** `{rm['id']}`: {rm.get('decision') or 'n/a'}"]
        for c in gate.get("compared", []):
            lines.append(f"  - {c['test set']}: {c['current']:.3f} -> {c['candidate']:.3f} "
                         f"({c['change']:+.3f}, n={c['n']})")
    return "\n".join(lines) + "\n"


def iteration_report(lake: Lake, row: dict, metrics: dict) -> str:
    it = row["iteration"]
    rms = {r["id"]: r for r in lake.rows("reward_models")}
    pols = {p["id"]: p for p in lake.rows("policies")}
    used = [rms[i] for i in (row["reward_model_id"], row.get("safety_reward_model_id"))
            if i in rms]
    trained = sorted((r for r in rms.values() if r["iteration"] == it),
                     key=lambda r: r["criterion"])
    pol_metrics = json.loads(pols.get(row["policy_out"], {}).get("metrics") or "{}")
    lines = [
        f"# Iteration {it}",
        "",
        f"**Decision:** {row['decision']}",
        "",
        "| metric | candidate | previous |",
        "|---|---|---|",
        f"| judge win rate (all held-out) | {_fmt(metrics['win_rate'])} | |",
        f"| judge win rate (helpful) | {_fmt(metrics['win_rate_helpful'])} | |",
        f"| harmful prompts answered | {_fmt(metrics['harmful_answered_new'])} | "
        f"{_fmt(metrics['harmful_answered_old'])} |",
        f"| helpful prompts refused | {_fmt(metrics['helpful_refused_new'])} | "
        f"{_fmt(metrics['helpful_refused_old'])} |",
        f"| mean judge score | {_fmt(metrics['judge_mean_new'])} | "
        f"{_fmt(metrics['judge_mean_old'])} |",
        f"| mean reward R_c on held-out answers | {_fmt(metrics.get('reward_mean_new'))} | "
        f"{_fmt(metrics.get('reward_mean_old'))} |",
        "",
        "## Reward models",
        "",
        "Trained this iteration, and the promotion gate:",
        "",
        gate_markdown(trained) if trained else "(none trained this iteration)\n",
        "Accuracy on held-out comparisons by preference strength (Llama 2, Table 8) of the "
        "models used:",
        "",
        table8_markdown(used),
        "## Rejection sampling rewards",
        "",
        f"Mean reward of all samples {_fmt(pol_metrics.get('reward_mean_all'))}, of the best per "
        f"prompt {_fmt(pol_metrics.get('reward_mean_best'))}; pool of "
        f"{pol_metrics.get('pool_size', 'n/a')} examples.",
        "",
        "All samples:",
        "```",
        *_histogram(pol_metrics.get("reward_all", [])),
        "```",
        "Best per prompt:",
        "```",
        *_histogram(pol_metrics.get("reward_best", [])),
        "```",
        "",
        "## Stage wall time (s)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in metrics.get("stage_seconds", {}).items()],
        f"| total | {sum(metrics.get('stage_seconds', {}).values()):.1f} |",
        "",
        "## Lineage",
        "",
        f"- batch `{row['batch_id']}`",
        *[f"- {r['criterion']} reward model `{r['id']}`: {r.get('uri', 'n/a')}" for r in used],
        f"- candidate policy `{row['policy_out']}`: {pols.get(row['policy_out'], {}).get('uri')}",
        f"- previous policy `{row['policy_in']}`",
        f"- lake: {lake.uri}",
    ]
    return "\n".join(lines) + "\n"
