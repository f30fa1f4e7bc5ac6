"""Stage 5, evaluate: greedy held-out answers judged head to head."""

from __future__ import annotations

import json
import statistics

from flywheel import models
from flywheel.annotation.prompts import user_text
from flywheel.config import FlywheelConfig
from flywheel.evaluation.gate import head_to_head
from flywheel.evaluation.proxy import ProxyJudge
from flywheel.lake.catalog import query, rows_by_id
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
    """Greedy answers of the candidate and the policy its iteration started from on held-out
    prompts, judged head to head."""
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
                                cfg.evaluation.temperature, sampler)
        answers[policy["id"]] = [r["text"] for r in rows]
        rows_of[policy["id"]] = rows
    judge = ProxyJudge(models.resolve(cfg.models.judge_embedder))
    texts = [user_text(p) for p in prompts]
    criteria = [p["criterion"] for p in prompts]
    judged = {pid: judge.judge(texts, criteria, a) for pid, a in answers.items()}
    new, old = judged[candidate["id"]], judged[baseline["id"]]
    return {"candidate": candidate["id"], "baseline": baseline["id"],
            **head_to_head(criteria, new, old),
            "vs_base": {"base": base["id"],
                        **head_to_head(criteria, new, judged[base["id"]])},
            **_reward_of_answers(cfg, lake, candidate, baseline, rows_of)}


def _earlier_answers(cfg: FlywheelConfig, lake: Lake, policy: dict,
                     prompts: list[dict]) -> list[dict] | None:
    """A policy's greedy held-out answers from an earlier evaluation with the same sampling
    settings (the base policy is the baseline of every first iteration), in prompt order; None
    unless every prompt has one. Sampled answers are never reused: they are draws."""
    if cfg.evaluation.temperature != 0:
        return None
    s = cfg.sampling
    want = {"temperature": 0.0, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
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
