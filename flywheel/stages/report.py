"""The markdown report of one iteration: decision, metrics, stage times, reward-model accuracy by
strength bucket (Llama 2's Table 8 layout) and the reward-model gate, reward distributions and
links into the lake."""

from __future__ import annotations

import json

from flywheel.evaluation.leaderboard import leaderboard_svg
from flywheel.evaluation.refusal import is_refusal
from flywheel.lake.catalog import query
from flywheel.lake.lineage import location, policy_location
from flywheel.lake.schemas import CRITERIA, SAFETY_LABELS, STRENGTHS
from flywheel.lake.store import Lake
from flywheel.stages.charts import bars_svg, data_uri, histogram_svg, lines_svg
from flywheel.stages.report_annotators import annotators_markdown
from flywheel.stages.report_evaluation import evaluation_markdown


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _fmt_rate(metrics: dict, key: str = "win_rate_helpful") -> str:
    """A win rate with its 95 % interval when the evaluation recorded one."""
    ci = metrics.get(f"{key}_ci95")
    return _fmt(metrics.get(key)) + (f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


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


SHORT_BUCKETS = ("significantly", "better", "slightly", "negligibly / unsure")
PLOTS = {  # file name (without .svg) -> caption
    "reward-distribution": "Reward R_c of the held-out answers, previous policy and candidate",
    "reward-model-accuracy": "Reward-model accuracy by preference strength",
    "rates-across-iterations": "Win rate and safety rates across iterations",
    "leaderboard": "Policy ratings (Bradley-Terry) with 95 % intervals",
}


RATE_COLUMNS = ("win rate", "win rate (helpful)", "harmful answered", "helpful refused",
                "mean reward", "helpful win rate vs base", "harmful answered by base")


def plot_path(iteration: int, name: str) -> str:
    """Where a plot lies in the lake, next to the report `reports/iteration-NNNN.md`."""
    return f"reports/iteration-{iteration:04d}/{name}.svg"


def history_rows(lake: Lake, row: dict, metrics: dict) -> list[dict]:
    """One row per iteration up to this one (earlier ones from the lake): the decision and the
    rates the line chart and the metrics table show."""
    rows = [(r, json.loads(r.get("metrics") or "{}")) for r in lake.rows("iterations")
            if r["iteration"] < row["iteration"]]
    out = []
    for r, m in sorted(rows + [(row, metrics)], key=lambda rm: rm[0]["iteration"]):
        out.append({"iteration": r["iteration"], "promoted": bool(r["promoted"]),
                    "win rate": m.get("win_rate"), "win rate (helpful)": m.get("win_rate_helpful"),
                    "harmful answered": m.get("harmful_answered_new"),
                    "helpful refused": m.get("helpful_refused_new"),
                    "mean reward": m.get("reward_mean_new"),
                    "helpful win rate vs base": m.get("vs_base", {}).get("win_rate_helpful"),
                    "harmful answered by base": m.get("vs_base", {}).get(
                        "harmful_answered_old")})
    return out


def iteration_plots(lake: Lake, row: dict, metrics: dict, used: list[dict]) -> dict[str, str]:
    """The report's charts as SVG documents, by name (the keys of PLOTS)."""
    history = history_rows(lake, row, metrics)
    acc = {f"{r['reward model'].split()[0]} / {r['test set']}": [r[b] for b in BUCKETS]
           for r in table8_rows(used)}
    rates = ("win rate", "win rate (helpful)", "harmful answered", "helpful refused")
    return {
        "reward-distribution": histogram_svg(PLOTS["reward-distribution"], {
            "previous policy": metrics.get("reward_old", []),
            "candidate": metrics.get("reward_new", [])}),
        "reward-model-accuracy": bars_svg(PLOTS["reward-model-accuracy"], list(SHORT_BUCKETS),
                                          acc),
        "rates-across-iterations": lines_svg(PLOTS["rates-across-iterations"],
                                             [h["iteration"] for h in history],
                                             {k: [h[k] for h in history] for k in rates}),
        **({"leaderboard": leaderboard_svg(metrics["leaderboard"])}
           if metrics.get("leaderboard") else {}),
    }


def used_reward_models(lake: Lake, row: dict) -> list[dict]:
    rms = {r["id"]: r for r in lake.rows("reward_models")}
    return [rms[i] for i in (row["reward_model_id"], row.get("safety_reward_model_id"))
            if i in rms]


def iteration_report(lake: Lake, row: dict, metrics: dict,
                     images: dict[str, str] | None = None) -> str:
    """The report; `images` maps plot names (PLOTS) to the URL each is shown from: a path
    relative to the report in the lake, or a data: URI in the Prefect artifact."""
    it = row["iteration"]
    rms = {r["id"]: r for r in lake.rows("reward_models")}
    pols = {p["id"]: p for p in lake.rows("policies")}
    used = used_reward_models(lake, row)
    trained = sorted((r for r in rms.values() if r["iteration"] == it),
                     key=lambda r: r["criterion"])
    out_policy = pols.get(row["policy_out"], {})
    rs_policy = out_policy
    if out_policy.get("method") == "ppo":  # rejection sampling or RRHF made its parent,
        parent = pols.get(out_policy.get("parent_id"), {})  # unless PPO ran alone
        rs_policy = parent if parent.get("iteration") == out_policy.get("iteration") else {}
    pol_metrics = json.loads(rs_policy.get("metrics") or "{}")
    lines = [
        f"# Iteration {it}",
        "",
        f"**Decision:** {row['decision']}",
        "",
        "| metric | candidate | previous |",
        "|---|---|---|",
        f"| judge win rate (all held-out) | {_fmt(metrics['win_rate'])} | |",
        f"| judge win rate (helpful: the gate's) | {_fmt_rate(metrics)} | |",
        f"| judge win rate (harmful) | {_fmt(metrics.get('win_rate_harmful'))} | |",
        f"| harmful prompts answered | {_fmt(metrics['harmful_answered_new'])} | "
        f"{_fmt(metrics['harmful_answered_old'])} |",
        f"| helpful prompts refused | {_fmt(metrics['helpful_refused_new'])} | "
        f"{_fmt(metrics['helpful_refused_old'])} |",
        f"| mean judge score | {_fmt(metrics['judge_mean_new'])} | "
        f"{_fmt(metrics['judge_mean_old'])} |",
        f"| mean reward R_c on held-out answers | {_fmt(metrics.get('reward_mean_new'))} | "
        f"{_fmt(metrics.get('reward_mean_old'))} |",
        "",
        *vs_base_markdown(metrics.get("vs_base")),
        *evaluation_markdown(metrics),
        "## Plots",
        "",
        *[f"![{PLOTS[name]}]({url})\n" for name, url in (images or {}).items()],
        "## Across iterations",
        "",
        "| iteration | promoted | " + " | ".join(RATE_COLUMNS) + " |",
        "|---|---|" + "---|" * len(RATE_COLUMNS),
        *[f"| {h['iteration']} | {'yes' if h['promoted'] else 'no'} | "
          + " | ".join(_fmt(h[c]) for c in RATE_COLUMNS) + " |"
          for h in history_rows(lake, row, metrics)],
        "",
        *annotation_markdown(lake, row.get("batch_id")),
        *annotators_markdown(lake, row.get("batch_id"), it),
        "## Reward models",
        "",
        "Trained this iteration, and the promotion gate:",
        "",
        gate_markdown(trained) if trained else "(none trained this iteration)\n",
        "Accuracy on held-out comparisons by preference strength (Llama 2, Table 8) of the "
        "models used:",
        "",
        table8_markdown(used),
        "## RRHF rewards" if rs_policy.get("method") == "rrhf" else
        "## Rejection sampling rewards",
        "",
        f"Mean reward of all samples {_fmt(pol_metrics.get('reward_mean_all'))}, of the best per "
        f"prompt {_fmt(pol_metrics.get('reward_mean_best'))}"
        + (f"; pool of {pol_metrics['pool_size']} examples" if "pool_size" in pol_metrics
           else "")
        + (f" ({pol_metrics['pool_cut_by_limit']} cut off by the token limit, learned without "
           "the end of their turn)." if "pool_cut_by_limit" in pol_metrics else
           f"; {pol_metrics['cut_by_limit']} of the samples cut off by the token limit, "
           "learned without the end of their turn." if "cut_by_limit" in pol_metrics else "."),
        *([f"Answers to prompts tagged safety: {pol_metrics['pool_safety']} fine-tuned on, "
           f"{pol_metrics['pool_safety_left_out']} left out by the safety share cap (earlier "
           "weeks' go first, the oldest first, then this week's lowest-reward ones)."]
          if pol_metrics.get("pool_safety_left_out") else []),
        *([f"Safety context distillation: {pol_metrics['preprompted_best']} of the kept answers "
           "were drawn with the safety preprompt ("
           + (f"{pol_metrics['preprompted_k']} draws" if "preprompted_k" in pol_metrics
              else "half of K") + " on each prompt tagged safety) and enter the pool without "
           "it."] if "preprompted_best" in pol_metrics else []),
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
        *ppo_markdown(json.loads(out_policy.get("metrics") or "{}")
                      if out_policy.get("method") == "ppo" else {}),
        *stage_seconds_markdown(metrics.get("stage_seconds", {})),
        "## Lineage",
        "",
        f"- batch `{row['batch_id']}`",
        *[f"- {r['criterion']} reward model `{r['id']}`: {location(lake, r.get('uri'))}"
          for r in used],
        f"- candidate policy `{row['policy_out']}`: "
        f"{policy_location(lake, pols.get(row['policy_out'], {}))}",
        f"- previous policy `{row['policy_in']}`",
        f"- this report: {location(lake, row.get('report_uri')) or 'n/a'}",
        *[f"- plot {name}: {lake.url(plot_path(it, name))}" for name in (images or {})],
        f"- lake: {lake.uri}",
    ]
    return "\n".join(lines) + "\n"


def annotation_markdown(lake: Lake, batch_id: str | None) -> list[str]:
    """The week's comparisons by criterion and strength; on harmful prompts, how many set a
    refusal against an answer and how often the refusal was preferred (the signal the safety
    reward model needs to rank refusals first); on helpful prompts, the same for refusals of
    harmless requests (the signal that teaches the helpfulness model false refusals lose)."""

    rows = query(lake, "SELECT criterion, split, strength, chosen_text, rejected_text FROM "
                 "comparison_texts WHERE batch_id = $batch",
                 {"batch": batch_id}) if batch_id else []
    if not rows:
        return []
    lines = ["## Annotation batch", "",
             f"Batch `{batch_id}`: comparisons by preference strength.", "",
             "| criterion | train | test | " + " | ".join(s.replace("_", " ") for s in STRENGTHS)
             + " |", "|---|---|---|" + "---|" * len(STRENGTHS)]
    for crit in CRITERIA:
        mine = [c for c in rows if c["criterion"] == crit]
        if mine:
            lines.append(f"| {crit} | {sum(c['split'] == 'train' for c in mine)} | "
                         f"{sum(c['split'] == 'test' for c in mine)} | "
                         + " | ".join(str(sum(c["strength"] == s for c in mine))
                                      for s in STRENGTHS) + " |")
    for crit in CRITERIA:
        mine = [c for c in rows if c["criterion"] == crit]
        mixed = [c for c in mine if is_refusal(c["chosen_text"]) != is_refusal(c["rejected_text"])]
        if crit == "safety" and mine:
            lines += ["", f"Refusal against answer: {len(mixed)} of the {len(mine)} safety "
                      f"comparisons; the refusal chosen in "
                      f"{sum(is_refusal(c['chosen_text']) for c in mixed)}."]
        elif mixed:  # a policy that refuses harmless requests shows up here
            lines += ["", f"Refusal of a harmless request against an answer: {len(mixed)} of the "
                      f"{len(mine)} {crit} comparisons; the answer chosen in "
                      f"{sum(not is_refusal(c['chosen_text']) for c in mixed)}."]
    return lines + [""]


def vs_base_markdown(vs: dict | None) -> list[str]:
    """The candidate against the base policy the loop started from (the same greedy held-out
    answers, judged head to head): how far the loop has come, not just this iteration."""
    if not vs:
        return []
    return [
        f"Against the base policy `{vs['base']}`: judge win rate {_fmt(vs['win_rate'])} "
        f"(helpful prompts {_fmt_rate(vs)}, harmful prompts "
        f"{_fmt(vs['win_rate_harmful'])}); harmful prompts answered "
        f"{_fmt(vs['harmful_answered_new'])} vs {_fmt(vs['harmful_answered_old'])} by the base; "
        f"helpful prompts refused {_fmt(vs['helpful_refused_new'])} vs "
        f"{_fmt(vs['helpful_refused_old'])}.", ""]


PPO_COLUMNS = ("reward", "kl", "entropy", "clip_fraction", "value_loss", "response_length")


POLICY_UPDATE_METHODS = ("rejection_sampling", "rrhf", "ppo")


def stage_seconds_markdown(seconds: dict[str, float]) -> list[str]:
    """The table of stage wall times: each policy-update method that ran on its own row, named
    as part of the policy update, and the total."""
    rows = [f"| policy update: {k} | {v:.1f} |" if k in POLICY_UPDATE_METHODS
            else f"| {k} | {v:.1f} |" for k, v in seconds.items()]
    return ["## Stage wall time (s)", "", "| stage | seconds |", "|---|---|", *rows,
            f"| total | {sum(seconds.values()):.1f} |", ""]


def ppo_markdown(metrics: dict) -> list[str]:
    """The PPO section: one row per step, and the held-out evaluations; nothing without PPO."""
    steps = metrics.get("ppo_steps")
    if not steps:
        return []
    lines = ["## PPO", "",
             "Per step: mean reward R_c of the rollouts (the update itself uses "
             "WHITEN(LOGIT(R_c)) minus the KL penalty), KL to the rejection-sampled policy "
             "(summed over a response), entropy, share of clipped tokens, value loss, response "
             "length in tokens.", "",
             "| step | " + " | ".join(PPO_COLUMNS) + " |",
             "|---|" + "---|" * len(PPO_COLUMNS),
             *[f"| {st['step']} | " + " | ".join(_fmt(st.get(c)) for c in PPO_COLUMNS) + " |"
               for st in steps], ""]
    ro = metrics.get("rollouts") or {}
    if ro.get("engine") == "vllm":
        secs = ro.get("reload_seconds") or [0.0]
        lines += [f"Rollouts sampled by vLLM, its weights reloaded in place after each update: "
                  f"{ro['reloads']} reloads, {sum(secs) / len(secs):.2f} s each on average "
                  f"(sampling {sum(ro.get('generate_seconds') or [0.0]):.1f} s in all).", ""]
    if metrics.get("heldout"):
        evals = ", ".join(f"step {e['step']}: {_fmt(e['heldout_reward'])}"
                          for e in metrics["heldout"])
        lines += [f"Held-out mean reward R_c: {evals}; kept the policy of step "
                  f"{metrics.get('best_step')}.", ""]
    return lines


def artifact_report(lake: Lake, row: dict) -> str:
    """The report of a recorded iteration row with its plots embedded as data: URIs, for the
    Prefect markdown artifact (the UI cannot fetch files from the lake)."""
    metrics = json.loads(row["metrics"])
    plots = iteration_plots(lake, row, metrics, used_reward_models(lake, row))
    return iteration_report(lake, row, metrics, {n: data_uri(s) for n, s in plots.items()})
