"""Scoring a stage's samples with the reward models it names, and writing the `scores` rows."""

from __future__ import annotations

from flywheel.annotation.prompts import messages_of
from flywheel.lake.schemas import content_id
from flywheel.reward.model import RewardModel
from flywheel.reward.scoring import Group, ScoringEngine


def group_samples(rows: list[dict], prompts: dict[str, dict]) -> tuple[list[Group], list[tuple]]:
    """Sample rows (the samples table) as one group per prompt, in order of first appearance.
    Returns (groups, where): where[i] is the (group, position) of rows[i]."""

    index: dict[str, int] = {}
    members: list[list[str]] = []
    where = []
    for r in rows:
        g = index.setdefault(r["prompt_id"], len(index))
        if g == len(members):
            members.append([])
        where.append((g, len(members[g])))
        members[g].append(r["text"])
    by_group = sorted(index, key=index.get)
    groups = [Group(messages_of(prompts[pid]), texts, prompts[pid]["criterion"] == "safety")
              for pid, texts in zip(by_group, members)]
    return groups, where


def score_samples(lake, rows: list[dict], prompts: dict[str, dict], rm_ids: dict[str, str],
                  engine: ScoringEngine) -> dict[str, list[float]]:
    """Score sample rows with each reward model of `rm_ids` ({kind: reward-model id}), loaded
    one at a time from the lake, grouped by prompt; write the `scores` rows (a re-run writes
    nothing new). Returns {kind: raw scores aligned with rows}."""

    groups, where = group_samples(rows, prompts)
    out = {}
    for kind, rm_id in rm_ids.items():
        rm = RewardModel.load(lake.artifact_path("reward_models", rm_id))
        scores = engine.rewards(rm, groups, desc=f"scoring with the {kind} RM")
        del rm
        out[kind] = [scores[g][k] for g, k in where]
        lake.write("scores", [
            {"id": content_id("score", r["id"], rm_id), "sample_id": r["id"],
             "reward_model_id": rm_id, "score": s} for r, s in zip(rows, out[kind])
        ], {"reward_model": rm_id, "kind": kind})
    return out
