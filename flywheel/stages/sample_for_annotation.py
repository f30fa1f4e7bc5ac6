"""Stage 1, sample for annotation: two policies answer the week's train prompts."""

from __future__ import annotations

from flywheel.annotation.pairs import cross_pairs
from flywheel.config import FlywheelConfig
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.stages.common import (
    current_policy,
    ensure_prompts,
    policy_path,
    previous_policy,
    sample_rows,
    sampler_for,
)


def week_prompts(prompts: list[dict], iteration: int, per_criterion: int | None) -> list[dict]:
    """The train prompts annotated in week `iteration`: all of them when `per_criterion` is
    None; else, per criterion, the next `per_criterion` in a fixed order (shuffled by a hash of
    the prompt id, so it does not follow the file), wrapping around, so that week w starts where
    week w-1 stopped. Returned in the order given."""
    if per_criterion is None:
        return prompts
    chosen: set[str] = set()
    for criterion in sorted({p["criterion"] for p in prompts}):
        ring = sorted((p["id"] for p in prompts if p["criterion"] == criterion),
                      key=lambda i: content_id("annotation-order", i))
        n = min(per_criterion, len(ring))
        start = (iteration - 1) * n
        chosen.update(ring[(start + k) % len(ring)] for k in range(n))
    return [p for p in prompts if p["id"] in chosen]


def sample_for_annotation(cfg: FlywheelConfig, lake: Lake, iteration: int) -> list[list[str]]:
    """Per train prompt of the week (`week_prompts`), `sampling.responses_per_policy`
    responses from the latest policy at the first temperature and as many from the previous
    policy at the second: on prompts not tagged safety both with `sampling.preprompt` as the
    system prompt, on prompts tagged safety the previous policy's with
    `sampling.safety_preprompt` (each when set). Returns the
    [latest sample id, previous sample id] pairs: every latest response of a prompt against
    every previous one (`cross_pairs`, which the exported pairs of human mode also use)."""
    prompts = week_prompts([p for p in ensure_prompts(cfg, lake) if p["split"] == "train"],
                           iteration, cfg.sampling.prompts_per_criterion)
    latest = current_policy(cfg, lake)
    previous = previous_policy(lake, latest)
    t_latest, t_prev = cfg.sampling.temperatures
    n = cfg.sampling.responses_per_policy
    helpful = [p for p in prompts if p["criterion"] != "safety"]
    harmful = [p for p in prompts if p["criterion"] == "safety"]
    out = {}
    for role, policy, temp in (("latest", latest, t_latest), ("previous", previous, t_prev)):
        sampler = sampler_for(cfg, policy_path(lake, policy))  # shared: one engine per policy
        # the context-distilled variant answers the harmful prompts for the previous policy
        on_harmful = cfg.sampling.safety_preprompt if role == "previous" else None
        groups = [(prompts, None)]
        if cfg.sampling.preprompt or on_harmful:
            groups = [(helpful, cfg.sampling.preprompt), (harmful, on_harmful)]
        by_prompt = {}
        for group, pre in groups:
            if group:
                rows = sample_rows(cfg, lake, policy, group, iteration, "annotation", n, temp,
                                    sampler, pre)
                by_prompt.update((r[0]["prompt_id"], r) for r in
                                 (rows[i : i + n] for i in range(0, len(rows), n)))
        out[role] = [by_prompt[p["id"]] for p in prompts]  # n rows per prompt, prompt order
    return [pair for mine, theirs in zip(out["latest"], out["previous"])
            for pair in cross_pairs([x["id"] for x in mine], [y["id"] for y in theirs])]
