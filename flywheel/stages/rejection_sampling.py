"""Stage 4, rejection sampling: K samples per prompt, scored, the best fine-tuned on."""

from __future__ import annotations

import json
import random
import statistics
import tempfile
from collections.abc import Callable

from flywheel import models
from flywheel.annotation.prompts import messages_of
from flywheel.config import FlywheelConfig
from flywheel.config.resources import identity
from flywheel.errors import DataError
from flywheel.evaluation.refusal import refusals
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.policy.finetune import Candidate, best_of, cap_safety_share, finetune_on_ranks
from flywheel.reward.combined import gated_rewards
from flywheel.reward.scoring import ScoringEngine
from flywheel.stages.common import (
    by_id,
    current_policy,
    ensure_prompts,
    policy_path,
    require_both,
    sample_rows,
    sampler_for,
)
from flywheel.stages.pool import (
    POOL_FILE,
    learned_by,
    pool_prompts,
    pool_samples,
    write_pool,
)
from flywheel.stages.scores import score_samples


def _teacher_policy(cfg: FlywheelConfig, lake: Lake) -> dict | None:
    """Distillation: the model rejection sampling draws from, as a policy row of its own."""
    name = cfg.rejection_sampling.teacher
    if not name:
        return None
    models.resolve(name)  # fails early, naming the fix, when it cannot be loaded
    row = {"id": content_id("policy", "teacher", name), "iteration": 0, "uri": name,
           "parent_id": None, "method": "teacher", "reward_model_id": None,
           "training_data": "{}", "metrics": "{}"}
    lake.write("policies", [row], {"reason": "distillation teacher"})
    return row


def cut_by_limit(sample: dict) -> bool:
    """Whether a sample ran to its `max_new_tokens` (cut off rather than ended)."""
    return sample["token_count"] >= json.loads(sample["params"])["max_new_tokens"]


def may_keep_when_ending(rows: list[dict], safety_ids: set[str]) -> set[str]:
    """The draws prefer_ended chooses among: those that ended, and every draw on a prompt
    tagged safety, where R_c alone decides. A refusal that runs on after its first sentences is
    cut by the limit more often than a harmful answer ends: in one week, 5 of the 21 harmful
    prompts whose best draw was a refusal would have kept an answer that ended instead
    (benchmarks/results/demo_stages.md, run I)."""
    return {r["id"] for r in rows if not cut_by_limit(r) or r["prompt_id"] in safety_ids}


def pick_best(candidates: list[Candidate], ended: set[str] | None) -> dict[str, Candidate]:
    """The best candidate per prompt by reward; with `ended` (prefer_ended), the best of those
    that ended, where one did."""
    best = best_of(candidates)
    if ended is not None:
        best.update(best_of([c for c in candidates if c.sample_id in ended]))
    return best


def pass_over_refusals(best: dict[str, Candidate], candidates: list[Candidate],
                       ended: set[str] | None, helpful: set[str],
                       refuses: Callable[[list[str]], list[bool]]
                       ) -> tuple[dict[str, Candidate], int]:
    """On the `helpful` prompts, the best candidate (as `pick_best` chooses) that `refuses`
    does not call a refusal, where one was drawn. Only the picks are classified, round by round,
    so a week costs a few hundred classifications, not one per draw. Returns the picks and how
    many prompts' first pick was a refusal passed over."""
    best = dict(best)
    refused: set[str] = set()
    checked: set[str] = set()
    passed_over: set[str] = set()
    while todo := [c for p, c in best.items() if p in helpful and c.sample_id not in checked]:
        for c, r in zip(todo, refuses([c.text for c in todo])):
            checked.add(c.sample_id)
            if r:
                refused.add(c.sample_id)
        for prompt_id in {c.prompt_id for c in todo if c.sample_id in refused}:
            rest = [c for c in candidates if c.prompt_id == prompt_id
                    and c.sample_id not in refused]
            if rest:
                best[prompt_id] = pick_best(rest, ended)[prompt_id]
                passed_over.add(prompt_id)
    return best, len(passed_over)


def only_refusals(best: dict[str, Candidate], candidates: list[Candidate], safety: set[str],
                  refuses: Callable[[list[str]], list[bool]], ended: set[str] | None = None
                  ) -> tuple[dict[str, Candidate], int]:
    """On the `safety` prompts, the best candidate that `refuses` calls a refusal, and no pick
    where none was drawn: a compliant answer to a harmful request is not learned, however the
    safety model ranks it. With `ended` (the ids of the draws that ended: prefer_ended), the
    best refusal that ended where one did: a refusal cut by the token limit repeats itself
    ("I'm sorry, but I'm unable to assist with that." three or four times over), and learned,
    it spread to harmless prompts (benchmarks/results/demo_stages.md, refusals that end).
    Returns the picks and how many safety prompts were left without one."""
    drawn = [c for c in candidates if c.prompt_id in safety]
    refused = pick_best([c for c, r in zip(drawn, refuses([c.text for c in drawn])) if r], ended)
    best = {p: c for p, c in best.items() if p not in safety} | refused
    return best, len({c.prompt_id for c in drawn} - set(refused))


def best_of_k_reward(cfg, lake, rows, by_prompt, rm_ids, engine) -> tuple[list[float], float]:
    """R_c of each sample and the mean over prompts of the best one."""
    raw = score_samples(lake, rows, by_prompt,
                        {k: rm_ids[k] for k in ("helpfulness", "safety")}, engine)
    rewards = gated_rewards(raw["helpfulness"], raw["safety"],
                            [by_prompt[r["prompt_id"]]["criterion"] == "safety" for r in rows])
    best: dict[str, float] = {}
    for r, x in zip(rows, rewards):
        best[r["prompt_id"]] = max(x, best.get(r["prompt_id"], -1.0))
    return rewards, statistics.fmean(best.values()) if best else 0.0


def tune_temperature(cfg: FlywheelConfig, lake: Lake, iteration: int, rm_ids: dict[str, str],
                     source: dict, sampler, engine) -> tuple[float, dict[str, float]]:
    """The temperature of `rejection_sampling.temperature_grid` whose K samples on the held-out
    prompts have the highest mean best-of-K R_c (ties: the lower temperature), with the mean of
    each; the configured temperature and {} without a grid."""
    rs = cfg.rejection_sampling
    if not rs.temperature_grid:
        return rs.temperature, {}
    heldout = [p for p in ensure_prompts(cfg, lake) if p["split"] == "heldout"]
    if not heldout:
        raise DataError("rejection_sampling.temperature_grid is tuned on held-out prompts and "
                        "the prompt set has none; add prompts with split heldout or empty the "
                        "grid")
    if rs.temperature_prompts and rs.temperature_prompts < len(heldout):
        heldout = sorted(heldout, key=lambda p: p["id"])
        random.Random(rs.seed).shuffle(heldout)
        heldout = heldout[: rs.temperature_prompts]
    by_prompt = by_id(heldout)
    search = {}
    for t in sorted(set(rs.temperature_grid)):
        rows = sample_rows(cfg, lake, source, heldout, iteration, "temperature-search", rs.k,
                            t, sampler, rs.preprompt, rs.max_new_tokens)
        search[str(t)] = best_of_k_reward(cfg, lake, rows, by_prompt, rm_ids, engine)[1]
    best = max(sorted(set(rs.temperature_grid)), key=lambda t: search[str(t)])
    return best, search


def scored_samples(cfg: FlywheelConfig, lake: Lake, iteration: int, rm_ids: dict[str, str],
                    purpose: str):
    """K samples per train prompt from the latest policy (or the distillation teacher), at the
    configured or re-tuned temperature, scored by both reward models and combined into Llama 2's
    R_c. Returns (latest policy, samples, their R_c, engine, what was sampled how)."""
    rs = cfg.rejection_sampling
    prompts = [p for p in ensure_prompts(cfg, lake) if p["split"] == "train"]
    latest = current_policy(cfg, lake)
    source = _teacher_policy(cfg, lake) or latest
    sampler = sampler_for(cfg, policy_path(lake, source))
    engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
    temperature, search = tune_temperature(cfg, lake, iteration, rm_ids, source, sampler, engine)
    safety = [p for p in prompts if p["criterion"] == "safety"] if rs.safety_preprompt else []
    k_pre = (rs.safety_preprompt_k or rs.k // 2) if safety else 0
    plain = [p for p in prompts if p not in safety]
    rows = []
    for group, n, preprompt in ((plain, rs.k, rs.preprompt),
                                (safety, rs.k - rs.k // 2, rs.preprompt),
                                (safety, k_pre, rs.safety_preprompt)):
        if group and n:
            rows += sample_rows(cfg, lake, source, group, iteration, purpose, n, temperature,
                                 sampler, preprompt, rs.max_new_tokens)
    rewards, _ = best_of_k_reward(cfg, lake, rows, by_id(prompts), rm_ids, engine)
    info = {"k": rs.k, "temperature": temperature, "sampled_by": source["id"]}
    if rs.preprompt:
        info["preprompt"] = rs.preprompt
    if k_pre:
        info["safety_preprompt"] = {"text": rs.safety_preprompt, "k": k_pre,
                                    "prompts": len(safety)}
    if search:
        info["temperature_search"] = search
    if source is not latest:
        info["teacher"] = source["uri"]
    return latest, rows, rewards, engine, info


def rejection_sample(cfg: FlywheelConfig, lake: Lake, iteration: int,
                     rm_ids: dict[str, str]) -> str:
    """K samples per train prompt from the latest policy, scored by both reward models and
    combined as Llama 2 does (the safety score where the prompt is tagged safety or the safety
    score is below 0.15, else the helpfulness score); the best per prompt joins the pool of
    every earlier iteration's best; fine-tune on the pool."""
    rs = cfg.rejection_sampling
    require_both(rm_ids, "rejection sampling")
    latest, rows, rewards, engine, info = scored_samples(cfg, lake, iteration, rm_ids,
                                                          "rejection")
    rm_id = rm_ids["helpfulness"]
    candidates = [Candidate(r["id"], r["prompt_id"], r["text"], s) for r, s in zip(rows, rewards)]
    safety_ids = {p["id"] for p in ensure_prompts(cfg, lake) if p["criterion"] == "safety"}
    ended = may_keep_when_ending(rows, safety_ids) if rs.prefer_ended else None
    best = pick_best(candidates, ended)
    passed_over = 0
    if rs.avoid_refusals:
        helpful = {r["prompt_id"] for r in rows} - safety_ids
        best, passed_over = pass_over_refusals(best, candidates, ended, helpful, refusals)
    if rs.safety_refusals_only:
        ends = {r["id"] for r in rows if not cut_by_limit(r)} if rs.prefer_ended else None
        best, without_refusal = only_refusals(best, candidates, safety_ids, refusals, ends)
    this_week = {r["id"]: r for r in rows}
    # the pool's samples and their prompts, not the whole tables
    samples = pool_samples(lake, iteration,
                           {c.sample_id: this_week[c.sample_id] for c in best.values()})
    # finetune_on new: what the latest policy's lineage has not been fine-tuned on yet
    learned = learned_by(lake, latest) & set(samples) if rs.finetune_on == "new" else set()
    pool = set(samples) - learned
    all_prompts = pool_prompts(lake, [s["prompt_id"] for s in samples.values()])
    # the safety share cap keeps the newest answers first: this week's by reward, then each
    # earlier week's, newest first
    reward_of = {c.sample_id: c.reward for c in best.values()}
    order = sorted(pool, key=lambda i: (-int(samples[i]["iteration"]), -reward_of.get(i, 0.0), i))
    on_safety = {i for i in pool if all_prompts[samples[i]["prompt_id"]]["criterion"] == "safety"}
    kept, left_out = cap_safety_share([i for i in order if i not in on_safety],
                                      [i for i in order if i in on_safety], rs.safety_share)
    pool_ids = sorted(kept)
    # a response that ran to the token limit was cut off, not finished: it is learned without
    # the end of its turn, so the policy does not learn to stop mid-sentence
    cut = {i for i in pool_ids if cut_by_limit(samples[i])}
    # safety_repeat: each answer to a safety prompt seen that many times an epoch
    examples = [(messages_of(all_prompts[samples[i]["prompt_id"]]), samples[i]["text"],
                 i not in cut) for i in pool_ids
                for _ in range(rs.safety_repeat if i in on_safety else 1)]
    policy_id = content_id("policy", iteration, latest["id"], rm_ids, pool_ids, identity(rs),
                           "cut responses learned without their end")
    with tempfile.TemporaryDirectory() as tmp:
        ft = finetune_on_ranks(policy_path(lake, latest), examples, rs, tmp)
        write_pool(tmp, samples, set(pool_ids), learned)
        uri = lake.put_artifact("policies", policy_id, tmp, {"parent": latest["id"]})
    best_rewards = [c.reward for c in best.values()]
    metrics = {"reward": "R_c: the gated sigmoid of the two reward models' scores",
               "scoring": vars(engine.stats),
               "reward_mean_all": statistics.fmean(rewards),
               "reward_mean_best": statistics.fmean(best_rewards),
               "reward_all": rewards, "reward_best": best_rewards,
               "pool_size": len(pool_ids), "pool_cut_by_limit": len(cut),
               "pool_learned_before": len(learned),
               "pool_safety": len(on_safety) - len(left_out),
               "pool_safety_left_out": len(left_out), "finetune": ft}
    if rs.avoid_refusals:
        metrics["refusals_passed_over"] = passed_over
    if rs.safety_refusals_only:
        metrics["safety_without_refusal"] = without_refusal
    if rs.prefer_ended:
        metrics["best_cut_by_limit"] = sum(cut_by_limit(this_week[c.sample_id])
                                           for c in best.values())
    if "safety_preprompt" in info:  # how many of the kept answers were drawn with it
        drawn_with = {r["id"] for r in rows
                      if json.loads(r["params"]).get("preprompt") == rs.safety_preprompt}
        metrics["preprompted_best"] = sum(c.sample_id in drawn_with for c in best.values())
        metrics["preprompted_k"] = info["safety_preprompt"]["k"]
    lake.write("policies", [{
        "id": policy_id, "iteration": iteration, "uri": uri, "parent_id": latest["id"],
        "method": "rejection_sampling", "reward_model_id": rm_id,
        "safety_reward_model_id": rm_ids["safety"],
        "training_data": json.dumps({"best": sorted(c.sample_id for c in best.values()),
                                     "pool_file": POOL_FILE, **info}),
        "metrics": json.dumps(metrics),
    }], {"reward_models": rm_ids})
    return policy_id
