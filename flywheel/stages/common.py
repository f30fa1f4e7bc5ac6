"""What every stage shares: the lake, the prompts, the policies and drawing samples."""

from __future__ import annotations

import json

from flywheel import models
from flywheel.annotation.prompts import load_prompts, messages_of
from flywheel.config import FlywheelConfig
from flywheel.errors import DataError
from flywheel.lake.lineage import NAMED_MODELS
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.policy.sampling import shared_sampler


def open_lake(cfg: FlywheelConfig) -> Lake:
    return Lake.open(cfg.lake)


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def ensure_prompts(cfg: FlywheelConfig, lake: Lake) -> list[dict]:
    rows = load_prompts(cfg.prompts.path, cfg.prompts.limit)
    lake.write("prompts", rows, {"source": cfg.prompts.path or "shipped demo prompts"})
    return rows


def _base_policy(cfg: FlywheelConfig) -> dict:
    return {
        "id": content_id("policy", "base", cfg.models.policy),
        "iteration": 0,
        "uri": cfg.models.policy,
        "parent_id": None,
        "method": "base",
        "reward_model_id": None,
        "training_data": "{}",
        "metrics": "{}",
    }


def current_policy(cfg: FlywheelConfig, lake: Lake) -> dict:
    """The policy the next iteration starts from: the last promoted one, else the base."""
    base = _base_policy(cfg)
    lake.write("policies", [base], {"reason": "base policy"})
    policies = by_id(lake.rows("policies"))
    iterations = sorted(lake.rows("iterations"), key=lambda r: r["iteration"])
    if not iterations:
        return policies[base["id"]]
    last = iterations[-1]
    return policies[last["policy_out"] if last["promoted"] else last["policy_in"]]


def previous_policy(lake: Lake, policy: dict) -> dict:
    """The policy the one given was made from in an earlier iteration (the base policy is its
    own predecessor)."""
    return iteration_start(lake, policy)


def policy_path(lake: Lake, policy: dict) -> str:
    if policy["method"] in NAMED_MODELS:
        return models.resolve(policy["uri"])
    return lake.artifact_path("policies", policy["id"])


def next_iteration(lake: Lake) -> int:
    done = [r["iteration"] for r in lake.rows("iterations")]
    return max(done, default=0) + 1


def sampler_for(cfg: FlywheelConfig, path: str):
    s = cfg.sampling
    return shared_sampler(s.backend, path, s.dtype, s.max_model_len, s.seed,
                          tensor_parallel_size=s.tensor_parallel_size,
                          gpu_memory_utilization=s.gpu_memory_utilization)


def sample_rows(cfg, lake, policy, prompts, iteration, purpose, n, temperature, sampler,
                 preprompt: str | None = None, max_new_tokens: int | None = None):
    """n samples per prompt, written to `samples`. `preprompt`: drawn with it as the system
    prompt (recorded in the params); the row still points at the prompt without it.
    `max_new_tokens`: this draw's token limit instead of `sampling.max_new_tokens`."""
    s = cfg.sampling
    limit = max_new_tokens or s.max_new_tokens
    params = {"backend": sampler.backend, "temperature": temperature, "top_p": s.top_p,
              "max_new_tokens": limit, "seed": s.seed, "n": n}
    if s.stop:  # recorded only when set, so the ids of samples drawn without one are unchanged
        params["stop"] = s.stop
    messages = [messages_of(p) for p in prompts]
    if preprompt:
        params["preprompt"] = preprompt
        messages = [[{"role": "system", "content": preprompt}]
                    + [m for m in ms if m["role"] != "system"] for ms in messages]
    gens = sampler.generate(messages, n, temperature, limit, s.top_p, s.stop)
    rows = []
    for prompt, group in zip(prompts, gens):
        for k, g in enumerate(group):
            rows.append({
                "id": content_id("sample", prompt["id"], policy["id"], iteration, purpose,
                                 params, k),
                "prompt_id": prompt["id"], "policy_id": policy["id"], "iteration": iteration,
                "purpose": purpose, "params": json.dumps(params), "text": g.text,
                "token_count": g.token_count, "logprob_sum": g.logprob_sum,
            })
    lake.write("samples", rows, {"stage": purpose, "iteration": iteration,
                                 "policy": policy["id"]})
    return rows


def iteration_start(lake: Lake, policy: dict) -> dict:
    """The policy an iteration's candidate started from: its nearest ancestor made in an
    earlier iteration (rejection sampling then PPO make two policies in one iteration)."""
    policies = by_id(lake.rows("policies"))
    current = policy
    while current["parent_id"]:
        current = policies[current["parent_id"]]
        if current["iteration"] < policy["iteration"] or current["method"] == "base":
            return current
    return current


def lineage_root(lake: Lake, policy: dict) -> dict:
    """The base policy a policy descends from."""
    policies = by_id(lake.rows("policies"))
    while policy["parent_id"]:
        policy = policies[policy["parent_id"]]
    return policy


def require_both(rm_ids: dict[str, str], what: str) -> None:
    missing = [k for k in ("helpfulness", "safety") if not rm_ids.get(k)]
    if missing:
        raise DataError(f"no {' or '.join(missing)} reward model yet: {what} scores with both; "
                        "ingest comparisons of that criterion (flywheel ingest, or flywheel "
                        "import of an open-source set) and retrain")


def preflight(cfg: FlywheelConfig) -> Lake:
    """Everything a run needs, checked before it starts: the lake answers, the models are on
    disk, the prompts parse. Each failure is one FlywheelError naming its fix."""
    lake = open_lake(cfg)
    for name in (cfg.models.policy, cfg.models.reward_backbone, cfg.models.judge_embedder):
        models.resolve(name)
    load_prompts(cfg.prompts.path, cfg.prompts.limit)
    return lake
