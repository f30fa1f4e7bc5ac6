"""What three demo iterations achieve: rejection sampling in iterations 1 and 2, rejection
sampling then PPO in iteration 3 (deployments/demo.yaml's schedule), each candidate judged
against its parent and against the base policy on the held-out prompts.

    .venv/bin/python benchmarks/bench_demo_loop.py --run [--lake ./bench-demo-loop/lake]
        [--config deployments/demo.yaml] [--out benchmarks/results/demo_loop.md]

--run runs `flywheel demo --iterations 3 --fresh` into the lake first; without it the lake's
recorded iterations are read (--config then only names the config they ran with). Writes
benchmarks/results/demo_loop.md unless --out names another file.

    .venv/bin/python benchmarks/bench_demo_loop.py --stages [--lake ./flywheel-demo/lake]
        [--run --iterations 2] [--before OTHER_LAKE --before-note "..."]

--stages writes the wall time of each stage of each iteration instead (what `make demo` costs
on this machine), to benchmarks/results/demo_stages.md unless --out names another file; with
--before, another lake's stage times side by side (an earlier config's run), and each run's
load average (`uptime`) as it ended when this run ran it.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _machine import describe

from flywheel.devices import resolve_dtype
from flywheel.lake.store import Lake

OUT = Path(__file__).parent / "results" / "demo_loop.md"
STAGES_OUT = OUT.with_name("demo_stages.md")
CONFIG = Path(__file__).resolve().parents[1] / "deployments" / "demo.yaml"


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _method(policies: dict, policy_id: str) -> str:
    chain, p = [], policies[policy_id]
    it = p["iteration"]
    while p and p["iteration"] == it and p["method"] != "base":
        chain.append(p["method"])
        p = policies.get(p["parent_id"])
    return " then ".join(reversed(chain))


def _config_line(path: Path) -> str:
    from flywheel.config import load_config

    c = load_config(str(path))
    return (f"policy {c.models.policy}, reward-model backbone {c.models.reward_backbone}, "
            f"simulated annotator, {_prompt_counts(c)}, {c.sampling.responses_per_policy} x "
            f"{c.sampling.responses_per_policy} comparisons per annotated prompt a week (at most "
            f"{c.sampling.prompts_per_criterion} train prompts of each criterion a week; None: "
            f"all) at T={c.sampling.temperatures[0]:g} / {c.sampling.temperatures[1]:g} up to "
            f"{c.sampling.max_new_tokens} tokens, the helpful ones drawn with a system prompt: "
            f"{bool(c.sampling.preprompt)}, reward "
            f"models {c.reward_model.epochs} epoch(s) at lr {c.reward_model.learning_rate:g}"
            f"{', a prompt per batch element' if c.reward_model.group_by_prompt else ''}, "
            f"rejection sampling best of K={c.rejection_sampling.k} at T="
            f"{c.rejection_sampling.temperature:g} (on harmful prompts "
            f"{_harmful_draws(c.rejection_sampling)}; only "
            f"refusals kept: {c.rejection_sampling.safety_refusals_only}, each learned "
            f"{c.rejection_sampling.safety_repeat}x an epoch; refusals passed over on helpful "
            f"prompts: {c.rejection_sampling.avoid_refusals}), answers to harmful "
            f"prompts at most {c.rejection_sampling.safety_share} of the fine-tuning set (None: "
            f"no cap), drawn with a system prompt distilled out: "
            f"{bool(c.rejection_sampling.preprompt)}, the best answer that ended kept where one "
            f"did: {c.rejection_sampling.prefer_ended}, fine-tuned on the "
            f"{'whole pool' if c.rejection_sampling.finetune_on == 'pool' else 'new answers'} "
            f"{c.rejection_sampling.epochs} epoch(s) at lr "
            f"{c.rejection_sampling.learning_rate:g}, annotation's previous-policy answers to "
            f"harmful prompts with the preprompt: "
            f"{bool(c.sampling.safety_preprompt)}, schedule {c.policy_update.schedule}, "
            f"sampling dtype {c.sampling.dtype} ({resolve_dtype(c.sampling.dtype)} here), "
            f"training precision {c.reward_model.precision} / {c.rejection_sampling.precision}")


def _harmful_draws(rs) -> str:
    """How a harmful prompt's draws are made, as rejection_sampling.scored_samples makes them."""
    if not rs.safety_preprompt:
        return f"{rs.k} plain draws"
    return (f"{rs.k - rs.k // 2} plain and {rs.safety_preprompt_k or rs.k // 2} with the "
            "safety preprompt")


def _config_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(CONFIG.parents[1]))
    except ValueError:
        return str(path)


def _prompt_counts(c) -> str:
    from collections import Counter

    from flywheel.annotation.prompts import load_prompts

    n = Counter((r["split"], r["criterion"]) for r in load_prompts(c.prompts.path))
    return (f"{sum(n.values())} prompts ({n['train', 'helpfulness']} helpful and "
            f"{n['train', 'safety']} harmful to train on, {n['heldout', 'helpfulness']} helpful "
            f"and {n['heldout', 'safety']} harmful held out)")


def reward_model_table(lake: Lake) -> list[str]:
    """Each iteration's reward models: pairs trained on, accuracy on the in-house test pairs
    (whole held-out prompts), the gate's decision."""
    lines = ["Reward models (accuracy on the in-house test pairs of every batch so far; a test "
             "prompt's comparisons are all held out):", "",
             "| iteration | criterion | pairs trained on | test accuracy (n) | decision |",
             "|---|---|---|---|---|"]
    for rm in sorted(lake.rows("reward_models"), key=lambda r: (r["iteration"], r["criterion"])):
        m = json.loads(rm["metrics"] or "{}").get("in_house") or {}
        total = json.loads(rm["data_mix"] or "{}").get("counts", {}).get("total")
        acc = f"{_f(m.get('accuracy'))} ({m.get('n', 0)})" if m else "n/a"
        lines.append(f"| {rm['iteration']} | {rm['criterion']} | {total} | {acc} | "
                     f"{'promoted' if rm['promoted'] else 'kept the current one'} |")
    return lines + [""]


def selection_diagnosis(lake: Lake) -> list[str]:
    """Where rejection sampling's signal stands: the proxy judge's mean score of the K samples
    per train prompt, of the sample the reward models picked (max R_c), of the judge's own best
    (best-of-K with a perfect reward model), and of the base policy's greedy held-out answers.
    Fine-tuning on the pool can only beat greedy decoding if the picked samples do."""
    from flywheel import models
    from flywheel.annotation.prompts import user_text
    from flywheel.evaluation.proxy import ProxyJudge
    from flywheel.reward.combined import gated_reward

    prompts = {p["id"]: p for p in lake.rows("prompts")}
    policies = {p["id"]: p for p in lake.rows("policies")}
    criterion = {r["id"]: r["criterion"] for r in lake.rows("reward_models")}
    raw: dict[str, dict[str, float]] = {}
    for sc in lake.rows("scores"):
        raw.setdefault(sc["sample_id"], {})[criterion[sc["reward_model_id"]]] = sc["score"]
    samples = lake.rows("samples")
    drawn = [r for r in samples if r["purpose"] == "rejection"]
    greedy = [r for r in samples if r["purpose"] == "evaluation"
              and policies[r["policy_id"]]["method"] == "base"]
    judge = ProxyJudge(models.resolve("builtin:all-minilm-l6-v2"))

    def judged(rows):
        return [j.score for j in judge.judge(
            [user_text(prompts[r["prompt_id"]]) for r in rows],
            [prompts[r["prompt_id"]]["criterion"] for r in rows], [r["text"] for r in rows])]

    score = dict(zip([r["id"] for r in drawn], judged(drawn)))
    base = dict(zip([r["id"] for r in greedy], judged(greedy)))
    groups: dict[tuple, list[dict]] = {}
    for r in drawn:
        groups.setdefault((r["iteration"], r["prompt_id"]), []).append(r)
    lines = ["Rejection sampling's selection, judged (mean proxy-judge score per prompt; "
             "train prompts, every iteration's K draws):", "",
             "| prompts | mean of the K draws | reward models' pick | judge's own best of K "
             "| base policy greedy (held-out prompts) |", "|---|---|---|---|---|"]
    for crit in ("helpfulness", "safety"):
        mean, pick, best = [], [], []
        for (_, pid), rows in groups.items():
            if prompts[pid]["criterion"] != crit or not all(
                    {"helpfulness", "safety"} <= set(raw.get(r["id"], {})) for r in rows):
                continue
            vals = [score[r["id"]] for r in rows]
            r_c = [gated_reward(raw[r["id"]]["helpfulness"], raw[r["id"]]["safety"],
                                crit == "safety") for r in rows]
            mean.append(sum(vals) / len(vals))
            pick.append(vals[max(range(len(rows)), key=r_c.__getitem__)])
            best.append(max(vals))
        g = [v for r, v in zip(greedy, base.values())
             if prompts[r["prompt_id"]]["criterion"] == crit]
        if mean:
            lines.append(f"| {crit} (n={len(mean)}) | {_f(sum(mean) / len(mean))} | "
                         f"{_f(sum(pick) / len(pick))} | {_f(sum(best) / len(best))} | "
                         f"{_f(sum(g) / len(g)) if g else 'n/a'} |")
    return lines + [""]


def helpful_interval(lake: Lake, policy_id: str) -> list[float] | None:
    """95 % interval of a policy's helpful win rate against the base, from the greedy held-out
    answers stored in the lake, judged again (lakes evaluated before the interval was recorded
    lack it)."""
    from flywheel import models
    from flywheel.annotation.prompts import user_text
    from flywheel.evaluation.gate import win_points, win_rate_interval
    from flywheel.evaluation.proxy import ProxyJudge

    prompts = {p["id"]: p for p in lake.rows("prompts")}
    base_id = next(p["id"] for p in lake.rows("policies") if p["method"] == "base")
    answers: dict[str, dict[str, str]] = {}
    for r in lake.rows("samples"):
        if r["purpose"] == "evaluation" and r["policy_id"] in (policy_id, base_id) and prompts[
                r["prompt_id"]]["criterion"] == "helpfulness":
            answers.setdefault(r["policy_id"], {}).setdefault(r["prompt_id"], r["text"])
    ids = sorted(set(answers.get(policy_id, {})) & set(answers.get(base_id, {})))
    judge = ProxyJudge(models.resolve("builtin:all-minilm-l6-v2"))
    texts, crit = [user_text(prompts[i]) for i in ids], ["helpfulness"] * len(ids)
    new, old = (judge.judge(texts, crit, [answers[p][i] for i in ids])
                for p in (policy_id, base_id))
    return win_rate_interval(win_points(list(zip(new, old))))


def stage_table(rows: list[dict], config: Path, wall: float | None,
                before: list[dict] | None = None, before_note: str = "",
                load: str = "") -> list[str]:
    """The seconds each stage took in each iteration, as the lake recorded them, and their total;
    the whole command's wall time when this run ran it; `before`: another lake's iterations in
    columns of their own, ahead of this run's."""
    runs = [("before, ", before or []), ("" if not before else "after, ", rows)]
    cols = [(f"{tag}iteration {r['iteration']} (s)", json.loads(r["metrics"])["stage_seconds"])
            for tag, rs in runs for r in rs]
    lines = [
        "# Demo wall time per stage",
        "",
        f"Machine: {describe()}. Config: {_config_name(config)} ({_config_line(config)}).",
        "Each stage's time includes loading its models (a vLLM engine start is about a minute "
        "here).",
        *([f"Before: {before_note}"] if before else []),
        *([f"Load average (1, 5, 15 min) as this run ended: {load}"] if load else []),
        "",
        "| stage | " + " | ".join(name for name, _ in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    stages = list(dict.fromkeys(k for _, s in cols for k in s))
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(
            f"{s[stage]:.1f}" if stage in s else "" for _, s in cols) + " |")
    lines.append("| **total** | " + " | ".join(f"{sum(s.values()):.1f}" for _, s in cols)
                 + " |")
    if before:
        b = sum(sum(s.values()) for _, s in cols[:len(before)])
        a = sum(sum(s.values()) for _, s in cols[len(before):])
        lines += ["", f"Stages of every iteration together: before {b:.0f} s, after {a:.0f} s "
                  f"({a / b:.2f} x)."]
    if wall:
        lines += ["", f"Whole `flywheel demo --iterations {len(rows)}` command: {wall:.0f} s "
                  "(includes the local Prefect server start)."]
    return lines + [""]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lake", default="./bench-demo-loop/lake")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--config", type=Path, default=CONFIG,
                    help="the demo's config (default: deployments/demo.yaml)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to write the results (default: results/demo_loop.md, or "
                         "results/demo_stages.md with --stages)")
    ap.add_argument("--run", action="store_true", help="run the demo first")
    ap.add_argument("--stages", action="store_true",
                    help="write the stage wall times of each iteration instead")
    ap.add_argument("--before", default=None,
                    help="with --stages: another lake whose stage times go beside this one's")
    ap.add_argument("--before-note", default="",
                    help="with --before: what that lake ran (config, date, load)")
    args = ap.parse_args()
    args.out = args.out or (STAGES_OUT if args.stages else OUT)
    wall, load = None, []
    if args.run:
        t0 = time.perf_counter()
        exe = Path(sys.executable).with_name("flywheel")
        subprocess.run([str(exe), "demo", "--config", str(args.config), "--iterations",
                        str(args.iterations), "--fresh", "--lake", args.lake],
                       check=True, start_new_session=True)
        wall = time.perf_counter() - t0
        load = Path("/proc/loadavg").read_text().split()[:3]
    lake = Lake.open(args.lake)
    rows = sorted(lake.rows("iterations"), key=lambda r: r["iteration"])
    if not rows:
        sys.exit(f"no iterations in {args.lake}; pass --run")
    if args.stages:
        before = (sorted(Lake.open(args.before).rows("iterations"),
                         key=lambda r: r["iteration"]) if args.before else None)
        _write(args.out, stage_table(rows, args.config, wall, before, args.before_note,
                                     ", ".join(load)))
        return
    policies = {p["id"]: p for p in lake.rows("policies")}
    lines = [
        "# Three demo iterations: rejection sampling, then PPO",
        "",
        f"Machine: {describe()}. Config: {_config_name(args.config)} "
        f"({_config_line(args.config)}).",
        "Win rates are the proxy judge's on greedy held-out answers (ties count half): against "
        "the policy the iteration started from, and against the base policy.",
        "",
        "| iteration | update | decision | win rate vs parent | helpful win rate vs parent "
        "| helpful win rate vs base | harmful answered (candidate / base) | helpful refused "
        "(candidate / base) | mean R_c (candidate / parent) | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = json.loads(r["metrics"])
        vb = m.get("vs_base", {})
        lines.append(
            f"| {r['iteration']} | {_method(policies, r['policy_out'])} | "
            f"{'promoted' if r['promoted'] else 'rolled back'} | {_f(m['win_rate'])} | "
            f"{_f(m['win_rate_helpful'])} | {_f(vb.get('win_rate_helpful'))} | "
            f"{_f(vb.get('harmful_answered_new'))} / {_f(vb.get('harmful_answered_old'))} | "
            f"{_f(vb.get('helpful_refused_new'))} / {_f(vb.get('helpful_refused_old'))} | "
            f"{_f(m.get('reward_mean_new'))} / {_f(m.get('reward_mean_old'))} | "
            f"{sum(m['stage_seconds'].values()):.0f} |")
    lines += ["", "Decisions: " + "; ".join(f"{r['iteration']}: {r['decision']}" for r in rows),
              ""]
    for r in rows:
        out = policies[r["policy_out"]]
        pm = json.loads(out.get("metrics") or "{}")
        if out["method"] != "ppo":
            continue
        lines += [f"PPO in iteration {r['iteration']} (per step: mean reward R_c of the "
                  "rollouts, KL to the rejection-sampled policy, entropy, clip fraction, value "
                  "loss, response length):", "",
                  "| step | reward | kl | entropy | clip fraction | value loss | length |",
                  "|---|---|---|---|---|---|---|"]
        for st in pm["ppo_steps"]:
            lines.append(f"| {st['step']} | {_f(st['reward'])} | {_f(st['kl'])} | "
                         f"{_f(st['entropy'])} | {_f(st['clip_fraction'])} | "
                         f"{_f(st['value_loss'])} | {st['response_length']:.1f} |")
        lines += ["", "Held-out mean reward R_c: " + ", ".join(
            f"step {e['step']}: {_f(e['heldout_reward'])}" for e in pm["heldout"])
            + f"; kept step {pm['best_step']}.", ""]
        ro = pm.get("rollouts") or {}
        if ro.get("engine") == "vllm":
            secs = ro["reload_seconds"] or [0.0]
            lines += [f"Rollouts through vLLM with the weights reloaded in place after each "
                      f"update: {ro['reloads']} reloads, mean {sum(secs) / len(secs):.2f} s, "
                      f"max {max(secs):.2f} s; sampling {sum(ro['generate_seconds']):.1f} s "
                      f"over {len(ro['generate_seconds'])} rollout batches.", ""]
    lines += reward_model_table(lake)
    lines += selection_diagnosis(lake)
    # The loop ends with the last promoted policy: a rolled-back last candidate is not it.
    kept = [r for r in rows if r["promoted"]]
    final = json.loads(kept[-1]["metrics"]).get("vs_base", {}) if kept else {}
    if not kept:
        lines += ["Final policy: the base (no iteration was promoted): **not met**.", ""]
    elif final:  # lakes from before the comparison with the base have none
        aim = (final["win_rate_helpful"] >= 0.6
               and final["harmful_answered_new"] < final["harmful_answered_old"])
        ci = final.get("win_rate_helpful_ci95") or helpful_interval(lake, kept[-1]["policy_out"])
        lines += [f"Final policy (iteration {kept[-1]['iteration']}'s, the last promoted) against "
                  f"the base: helpful win rate {_f(final['win_rate_helpful'])} (95 % CI "
                  f"{_f(ci[0])}-{_f(ci[1])}; aim >= 0.600), "
                  f"harmful prompts answered {_f(final['harmful_answered_new'])} vs "
                  f"{_f(final['harmful_answered_old'])} (aim: fewer): "
                  f"**{'met' if aim else 'not met'}**.", ""]
    if wall:
        lines += [f"Whole `flywheel demo --iterations {args.iterations}` command: {wall:.0f} s "
                  "(local Prefect server start included).", ""]
    _write(args.out, lines)


def _write(out: Path, lines: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
