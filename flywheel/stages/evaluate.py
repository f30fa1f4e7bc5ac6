"""Stage 5, evaluate: greedy held-out answers judged head to head, and the standard suites."""

from __future__ import annotations

import json
import statistics

from flywheel.annotation.prompts import user_text
from flywheel.config import FlywheelConfig
from flywheel.config.evaluation import answer_limit
from flywheel.evaluation.agreement import (
    HH_TEST_FILES,
    latest_agreement,
    measure,
    read_comparisons,
    record,
)
from flywheel.evaluation.gate import head_to_head
from flywheel.evaluation.judge import make_judge
from flywheel.evaluation.leaderboard import leaderboard
from flywheel.evaluation.refusal import REFUSED, refusal_labels
from flywheel.evaluation.run import evaluate_policy
from flywheel.evaluation.suites import data_dir
from flywheel.evaluation.verdicts import Pair
from flywheel.lake.catalog import query, rows_by_id
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.reward.combined import gated_rewards
from flywheel.reward.scoring import ScoringEngine
from flywheel.stages.common import (
    by_id,
    ensure_prompts,
    iteration_start,
    lineage_root,
    policy_path,
    sample_rows,
    sampler_for,
)
from flywheel.stages.scores import score_samples


def evaluate(cfg: FlywheelConfig, lake: Lake, iteration: int, candidate_id: str) -> dict:
    """Greedy answers of the candidate, the policy its iteration started from and the base on
    the held-out prompts, judged head to head by the configured judge and recorded in
    `evaluations` (suite `heldout`); then the configured standard suites, candidate against
    the policy it started from; the judge's measured agreement with people and the leaderboard
    of every policy judged so far."""
    ev = cfg.evaluation
    prompts = [p for p in ensure_prompts(cfg, lake) if p["split"] == "heldout"]
    policies = by_id(lake.rows("policies"))
    candidate = policies[candidate_id]
    baseline = iteration_start(lake, candidate)
    base = lineage_root(lake, candidate)
    answers, rows_of = {}, {}
    for policy in (candidate, baseline, base):
        if policy["id"] in rows_of:
            continue
        rows = _earlier_answers(cfg, lake, policy, prompts)
        if rows is None:
            sampler = sampler_for(cfg, policy_path(lake, policy))
            rows = sample_rows(cfg, lake, policy, prompts, iteration, "evaluation", 1,
                                ev.temperature, sampler, max_new_tokens=answer_limit(cfg))
        answers[policy["id"]] = [r["text"] for r in rows]
        rows_of[policy["id"]] = rows
    judge = make_judge(ev.judge, cfg, lake)
    texts = [user_text(p) for p in prompts]
    criteria = [p["criterion"] for p in prompts]
    labels = dict(zip(answers, _chunks(refusal_labels([t for a in answers.values() for t in a]),
                                       [len(a) for a in answers.values()])))
    run_id = content_id("evaluate-stage", iteration, candidate["id"])
    results = {}
    for other in {baseline["id"]: baseline, base["id"]: base}.values():
        if other["id"] == candidate["id"]:
            continue
        verdicts = judge.compare([Pair((t,), (a,), (b,), c) for t, a, b, c in zip(
            texts, answers[candidate["id"]], answers[other["id"]], criteria)])
        refused = {pid: [label in REFUSED for label in labels[pid]]
                   for pid in (candidate["id"], other["id"])}
        results[other["id"]] = head_to_head(criteria, verdicts, refused[candidate["id"]],
                                            refused[other["id"]], ev.bootstrap)
        lake.write("evaluations", heldout_rows(run_id, iteration, prompts, candidate, other,
                                               answers, labels, verdicts, judge.key),
                   {"stage": "evaluate", "run": run_id, "suite": "heldout"})
    suites = {}
    if ev.suites:
        suites = evaluate_policy(cfg, lake, candidate, baseline, ev.suites, ev.suite_limit,
                                 judge, run_id, iteration)["suites"]
    return {"candidate": candidate["id"], "baseline": baseline["id"],
            **results[baseline["id"]],
            "vs_base": {"base": base["id"], **results.get(base["id"], results[baseline["id"]])},
            "judge": judge.key, "judge_agreement": measure_agreement(cfg, lake, judge),
            "suites": suites,
            "leaderboard": leaderboard(lake, judge=judge.key, n=ev.bootstrap),
            **_reward_of_answers(cfg, lake, candidate, baseline, rows_of)}


def measure_agreement(cfg: FlywheelConfig, lake: Lake, judge) -> dict | None:
    """The judge's newest measured agreement; measured first, on `agreement_pairs` HH-RLHF
    test pairs, when it never was and the config asks for it."""
    row = latest_agreement(lake, judge.key)
    n = cfg.evaluation.agreement_pairs
    if row is None and n:
        per_file = -(-n // len(HH_TEST_FILES))
        files = [read_comparisons(str(data_dir(cfg) / name), limit=per_file)
                 for name in HH_TEST_FILES]
        record(lake, measure(judge, files, bootstrap=cfg.evaluation.bootstrap))
        row = latest_agreement(lake, judge.key)
    return None if row is None else _agreement_summary(row)


def _agreement_summary(row: dict) -> dict:
    m = row["metrics"]
    return {"source": row["source"], "pairs": row["pairs"], "agreement": row["agreement"],
            "agreement_ci": m.get("agreement_ci"), "agreement_no_ties": row["agreement_no_ties"],
            "flip_rate": row["flip_rate"], "measured_at": str(row["created_at"]),
            "by_criterion": {c: v.get("agreement")
                             for c, v in (m.get("by_criterion") or {}).items()}}


def _chunks(values: list, sizes: list[int]) -> list[list]:
    out, i = [], 0
    for n in sizes:
        out.append(values[i:i + n])
        i += n
    return out


def heldout_rows(run_id: str, iteration: int, prompts: list[dict], policy: dict, other: dict,
                 answers: dict, labels: dict, verdicts: list, judge_key: str) -> list[dict]:
    """One `evaluations` row per held-out prompt: the policy (side a) against the other."""
    rows = []
    for k, (prompt, v) in enumerate(zip(prompts, verdicts)):
        mine, theirs = answers[policy["id"]][k], answers[other["id"]][k]
        rows.append({
            "id": content_id(run_id, "heldout", prompt["id"], other["id"]), "run_id": run_id,
            "suite": "heldout", "item_id": prompt["id"], "category": prompt["criterion"],
            "policy_id": policy["id"], "against_id": other["id"], "iteration": iteration,
            "prompt": json.dumps([user_text(prompt)]), "answer": json.dumps([mine]),
            "against_answer": json.dumps([theirs]), "judge": judge_key,
            "verdict": v.winner, "flipped": v.flipped, "refusal": labels[policy["id"]][k],
            "against_refusal": labels[other["id"]][k],
            "metrics": json.dumps({"criterion": prompt["criterion"], "points": v.points_a,
                                   "scores": [v.score_a, v.score_b], "length": len(mine),
                                   "against_length": len(theirs)})})
    return rows


def _earlier_answers(cfg: FlywheelConfig, lake: Lake, policy: dict,
                     prompts: list[dict]) -> list[dict] | None:
    """A policy's greedy held-out answers from an earlier evaluation with the same sampling
    settings (the base policy is the baseline of every first iteration), in prompt order; None
    unless every prompt has one. Sampled answers are never reused: they are draws."""
    if cfg.evaluation.temperature != 0:
        return None
    s = cfg.sampling
    want = {"temperature": 0.0, "top_p": s.top_p, "max_new_tokens": answer_limit(cfg),
            "n": 1, "backend": s.backend}
    found = {}
    for r in query(lake, "SELECT * FROM samples WHERE policy_id = $policy AND purpose = "
                   "'evaluation' ORDER BY created_at, id", {"policy": policy["id"]}):
        params = json.loads(r["params"])
        if all(params.get(k) == v for k, v in want.items()):
            found.setdefault(r["prompt_id"], r)
    if not all(p["id"] in found for p in prompts):
        return None
    return [found[p["id"]] for p in prompts]


def _reward_of_answers(cfg: FlywheelConfig, lake: Lake, candidate: dict, baseline: dict,
                       rows_of: dict[str, list[dict]]) -> dict:
    """R_c of the candidate's and its baseline's held-out answers under the reward models the
    candidate was trained with (both answers to a prompt scored as one group), for the
    before/after reward distributions of the report. Empty when the policy names none."""
    rm_ids = {"helpfulness": candidate.get("reward_model_id"),
              "safety": candidate.get("safety_reward_model_id")}
    if not all(rm_ids.values()):
        return {}
    new, old = rows_of[candidate["id"]], rows_of[baseline["id"]]
    prompts = rows_by_id(lake, "prompts", [r["prompt_id"] for r in new + old])
    engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
    raw = score_samples(lake, new + old, prompts, rm_ids, engine)
    rc = gated_rewards(raw["helpfulness"], raw["safety"],
                       [prompts[r["prompt_id"]]["criterion"] == "safety" for r in new + old])
    return {"reward_new": rc[: len(new)], "reward_old": rc[len(new):],
            "reward_mean_new": statistics.fmean(rc[: len(new)]) if new else None,
            "reward_mean_old": statistics.fmean(rc[len(new):]) if old else None}
