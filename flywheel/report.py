"""The markdown report of one iteration: decision, metrics, stage times, reward-model accuracy by
strength bucket, reward distributions and links into the lake."""

from __future__ import annotations

import json

from flywheel.lake import Lake
from flywheel.schemas import STRENGTHS


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


def iteration_report(lake: Lake, row: dict, metrics: dict) -> str:
    it = row["iteration"]
    rms = {r["id"]: r for r in lake.rows("reward_models")}
    pols = {p["id"]: p for p in lake.rows("policies")}
    rm = rms.get(row["reward_model_id"], {})
    rm_metrics = json.loads(rm.get("metrics") or "{}")
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
        "",
        "## Reward model accuracy by strength (held-out comparisons)",
        "",
        "| " + " | ".join(s.replace("_", " ") for s in STRENGTHS) + " | overall |",
        "|" + "---|" * (len(STRENGTHS) + 1),
        "| " + " | ".join(
            _fmt(rm_metrics.get("by_strength", {}).get(s, {}).get("accuracy"))
            for s in STRENGTHS
        ) + f" | {_fmt(rm_metrics.get('accuracy'))} (n={rm_metrics.get('n', 0)}) |",
        "",
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
        f"- reward model `{row['reward_model_id']}`: {rm.get('uri', 'n/a')}",
        f"- candidate policy `{row['policy_out']}`: {pols.get(row['policy_out'], {}).get('uri')}",
        f"- previous policy `{row['policy_in']}`",
        f"- lake: {lake.uri}",
    ]
    return "\n".join(lines) + "\n"
