"""The weekly loop's stages as plain functions: config and lake in, lake ids out.

Each stage reads what it needs from the lake, writes its results there (rows, then checkpoints
with their completion markers), and returns ids, so an orchestrator can pass small values between
stages and any stage can run in its own process. Stage order:

    sample_for_annotation -> annotate -> train_reward_models -> rejection_sample -> evaluate
    -> decide (promote or roll back, write the iteration row and its report)
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile

from flywheel import models
from flywheel.annotation import Pair
from flywheel.annotation import annotate as label_pairs
from flywheel.config import FlywheelConfig
from flywheel.errors import DataError
from flywheel.evaluation import gate, head_to_head
from flywheel.ingest import ingest_bytes
from flywheel.judge import ProxyJudge
from flywheel.lake import Lake
from flywheel.pairs import write_delivery_jsonl
from flywheel.policy import (
    Candidate,
    best_of,
    cap_safety_share,
    finetune,
    gated_reward,
    rrhf_finetune,
)
from flywheel.prompts import load_prompts, messages_of, user_text
from flywheel.sampling import close_samplers, shared_sampler
from flywheel.schemas import content_id
from flywheel.scoring import ScoringEngine, score_samples


def open_lake(cfg: FlywheelConfig) -> Lake:
    return Lake.open(cfg.lake)


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


# policies ----------------------------------------------------------------------------------
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
    policies = _by_id(lake.rows("policies"))
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
    if policy["method"] in ("base", "teacher"):
        return models.resolve(policy["uri"])
    return lake.artifact_path("policies", policy["id"])


def next_iteration(lake: Lake) -> int:
    done = [r["iteration"] for r in lake.rows("iterations")]
    return max(done, default=0) + 1


def _sampler(cfg: FlywheelConfig, path: str):
    s = cfg.sampling
    return shared_sampler(s.backend, path, s.dtype, s.max_model_len, s.seed,
                          tensor_parallel_size=s.tensor_parallel_size,
                          gpu_memory_utilization=s.gpu_memory_utilization)


def _sample_rows(cfg, lake, policy, prompts, iteration, purpose, n, temperature, sampler,
                 preprompt: str | None = None):
    """n samples per prompt, written to `samples`. `preprompt`: drawn with it as the system
    prompt (recorded in the params); the row still points at the prompt without it."""
    s = cfg.sampling
    params = {"backend": sampler.backend, "temperature": temperature, "top_p": s.top_p,
              "max_new_tokens": s.max_new_tokens, "seed": s.seed, "n": n}
    if s.stop:  # recorded only when set, so the ids of samples drawn without one are unchanged
        params["stop"] = s.stop
    messages = [messages_of(p) for p in prompts]
    if preprompt:
        params["preprompt"] = preprompt
        messages = [[{"role": "system", "content": preprompt}]
                    + [m for m in ms if m["role"] != "system"] for ms in messages]
    gens = sampler.generate(messages, n, temperature, s.max_new_tokens, s.top_p, s.stop)
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


# stage 1 -----------------------------------------------------------------------------------
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
    policy at the second (on prompts tagged safety with `sampling.safety_preprompt` as the
    system prompt, when set). Returns the
    [latest sample id, previous sample id] pairs: every latest response of a prompt against
    every previous one."""
    prompts = week_prompts([p for p in ensure_prompts(cfg, lake) if p["split"] == "train"],
                           iteration, cfg.sampling.prompts_per_criterion)
    latest = current_policy(cfg, lake)
    previous = previous_policy(lake, latest)
    t_latest, t_prev = cfg.sampling.temperatures
    n = cfg.sampling.responses_per_policy
    pre = cfg.sampling.safety_preprompt
    out = {}
    for role, policy, temp in (("latest", latest, t_latest), ("previous", previous, t_prev)):
        sampler = _sampler(cfg, policy_path(lake, policy))  # shared: one engine per policy
        groups = [prompts]
        if role == "previous" and pre:  # the context-distilled variant on the harmful prompts
            groups = [[p for p in prompts if p["criterion"] != "safety"],
                      [p for p in prompts if p["criterion"] == "safety"]]
        by_prompt = {}
        for g, group in enumerate(groups):
            if group:
                rows = _sample_rows(cfg, lake, policy, group, iteration, "annotation", n, temp,
                                    sampler, pre if g == 1 else None)
                by_prompt.update((r[0]["prompt_id"], r) for r in
                                 (rows[i : i + n] for i in range(0, len(rows), n)))
        out[role] = [by_prompt[p["id"]] for p in prompts]  # n rows per prompt, prompt order
    return [[x["id"], y["id"]] for mine, theirs in zip(out["latest"], out["previous"])
            for x in mine for y in theirs]


# stage 2 -----------------------------------------------------------------------------------
def annotate(cfg: FlywheelConfig, lake: Lake, iteration: int, pairs: list[list[str]]) -> str:
    """Label the pairs with the simulated annotator and ingest them as one batch, through the
    same validation as any delivered batch. Returns the batch id."""
    samples = _by_id(lake.rows("samples"))
    prompts = _by_id(lake.rows("prompts"))
    todo = []
    for a_id, b_id in pairs:
        a, b = samples[a_id], samples[b_id]
        p = prompts[a["prompt_id"]]
        todo.append(Pair(p["id"], user_text(p), p["criterion"], a_id, a["text"], b_id, b["text"]))
    judge = ProxyJudge(models.resolve(cfg.models.judge_embedder))
    rows = label_pairs(judge, todo, cfg.annotation.strength_thresholds)
    data = write_delivery_jsonl(rows)
    batch_id = f"iteration-{iteration:04d}-simulated"
    result = ingest_bytes(lake, data, f"{batch_id}.jsonl", batch_id, cfg.annotation, iteration,
                          source="simulated")
    return result.batch_id


# stage 3 -----------------------------------------------------------------------------------
def pending_batches(lake: Lake) -> list[str]:
    """Batches with a delivery of new rows that no reward model has trained on yet, oldest
    first (a corrected re-delivery of a trained batch is pending again)."""
    trained = set()
    for rm in lake.rows("reward_models"):
        trained.update(json.loads(rm["data_mix"] or "{}").get("deliveries", []))
    landed = sorted((b for b in lake.rows("batches") if b["new"]), key=lambda b: b["created_at"])
    return list(dict.fromkeys(b["batch_id"] for b in landed if b["id"] not in trained))


def train_reward_models(cfg: FlywheelConfig, lake: Lake, iteration: int,
                        batch_id: str | None) -> dict[str, dict]:
    """Retrain the helpfulness and the safety reward model on their Llama 2 mixes of the lake,
    evaluate both on every test set and gate each against the current one of its kind
    (flywheel/rm_training.py). Returns, per kind, {id, promoted, decision, current}."""
    from flywheel.rm_training import retrain

    return retrain(cfg, lake, iteration, batch_id)


def reward_model_ids(results: dict[str, dict]) -> dict[str, str]:
    """The reward models in use after a retrain: {kind: id}."""
    return {kind: r["current"] for kind, r in results.items()}


# stage 4 -----------------------------------------------------------------------------------
def _require_both(rm_ids: dict[str, str], what: str) -> None:
    missing = [k for k in ("helpfulness", "safety") if not rm_ids.get(k)]
    if missing:
        raise DataError(f"no {' or '.join(missing)} reward model yet: {what} scores with both; "
                        "ingest comparisons of that criterion (flywheel ingest, or flywheel "
                        "import of an open-source set) and retrain")


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


def _best_of_k_reward(cfg, lake, rows, by_prompt, rm_ids, engine) -> tuple[list[float], float]:
    """R_c of each sample and the mean over prompts of the best one."""
    raw = score_samples(lake, rows, by_prompt,
                        {k: rm_ids[k] for k in ("helpfulness", "safety")}, engine)
    rewards = [gated_reward(h, sf, by_prompt[r["prompt_id"]]["criterion"] == "safety")
               for r, h, sf in zip(rows, raw["helpfulness"], raw["safety"])]
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
    by_prompt = _by_id(heldout)
    search = {}
    for t in sorted(set(rs.temperature_grid)):
        rows = _sample_rows(cfg, lake, source, heldout, iteration, "temperature-search", rs.k,
                            t, sampler)
        search[str(t)] = _best_of_k_reward(cfg, lake, rows, by_prompt, rm_ids, engine)[1]
    best = max(sorted(set(rs.temperature_grid)), key=lambda t: search[str(t)])
    return best, search


def _scored_samples(cfg: FlywheelConfig, lake: Lake, iteration: int, rm_ids: dict[str, str],
                    purpose: str):
    """K samples per train prompt from the latest policy (or the distillation teacher), at the
    configured or re-tuned temperature, scored by both reward models and combined into Llama 2's
    R_c. Returns (latest policy, samples, their R_c, engine, what was sampled how)."""
    rs = cfg.rejection_sampling
    prompts = [p for p in ensure_prompts(cfg, lake) if p["split"] == "train"]
    latest = current_policy(cfg, lake)
    source = _teacher_policy(cfg, lake) or latest
    sampler = _sampler(cfg, policy_path(lake, source))
    engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
    temperature, search = tune_temperature(cfg, lake, iteration, rm_ids, source, sampler, engine)
    safety = [p for p in prompts if p["criterion"] == "safety"] if rs.safety_preprompt else []
    k_pre = rs.k // 2 if safety else 0
    plain = [p for p in prompts if p not in safety]
    rows = []
    for group, n, preprompt in ((plain, rs.k, None), (safety, rs.k - k_pre, None),
                                (safety, k_pre, rs.safety_preprompt)):
        if group and n:
            rows += _sample_rows(cfg, lake, source, group, iteration, purpose, n, temperature,
                                 sampler, preprompt)
    rewards, _ = _best_of_k_reward(cfg, lake, rows, _by_id(prompts), rm_ids, engine)
    info = {"k": rs.k, "temperature": temperature, "sampled_by": source["id"]}
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
    _require_both(rm_ids, "rejection sampling")
    latest, rows, rewards, engine, info = _scored_samples(cfg, lake, iteration, rm_ids,
                                                          "rejection")
    rm_id = rm_ids["helpfulness"]
    best = best_of([Candidate(r["id"], r["prompt_id"], r["text"], s)
                    for r, s in zip(rows, rewards)])
    earlier = [json.loads(p["training_data"]).get("best", []) for p in lake.rows("policies")
               if p["method"] == "rejection_sampling" and p["iteration"] < iteration]
    pool = {i for ids in earlier for i in ids} | {c.sample_id for c in best.values()}
    samples = _by_id(lake.rows("samples"))
    all_prompts = _by_id(lake.rows("prompts"))
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
    examples = [(messages_of(all_prompts[samples[i]["prompt_id"]]), samples[i]["text"],
                 i not in cut) for i in pool_ids]
    policy_id = content_id("policy", iteration, latest["id"], rm_ids, pool_ids, rs.model_dump(),
                           "cut responses learned without their end")
    with tempfile.TemporaryDirectory() as tmp:
        ft = finetune(policy_path(lake, latest), examples, rs, tmp)
        uri = lake.put_artifact("policies", policy_id, tmp, {"parent": latest["id"]})
    best_rewards = [c.reward for c in best.values()]
    metrics = {"reward": "R_c: the gated sigmoid of the two reward models' scores",
               "scoring": vars(engine.stats),
               "reward_mean_all": statistics.fmean(rewards),
               "reward_mean_best": statistics.fmean(best_rewards),
               "reward_all": rewards, "reward_best": best_rewards,
               "pool_size": len(pool_ids), "pool_cut_by_limit": len(cut),
               "pool_safety": len(on_safety) - len(left_out),
               "pool_safety_left_out": len(left_out), "finetune": ft}
    if "safety_preprompt" in info:  # how many of the kept answers were drawn with it
        drawn_with = {r["id"] for r in rows if "preprompt" in json.loads(r["params"])}
        metrics["preprompted_best"] = sum(c.sample_id in drawn_with for c in best.values())
    lake.write("policies", [{
        "id": policy_id, "iteration": iteration, "uri": uri, "parent_id": latest["id"],
        "method": "rejection_sampling", "reward_model_id": rm_id,
        "safety_reward_model_id": rm_ids["safety"],
        "training_data": json.dumps({"best": sorted(c.sample_id for c in best.values()),
                                     "pool": pool_ids, "left_out": sorted(left_out), **info}),
        "metrics": json.dumps(metrics),
    }], {"reward_models": rm_ids})
    return policy_id


def rrhf_update(cfg: FlywheelConfig, lake: Lake, iteration: int,
                rm_ids: dict[str, str]) -> str:
    """RRHF from the latest policy: the K samples per train prompt that rejection sampling would
    draw, scored the same way (R_c); one pass of ranking loss over each prompt's K samples plus
    fine-tuning on its best. Returns the policy id."""
    _require_both(rm_ids, "RRHF")
    latest, rows, rewards, engine, info = _scored_samples(cfg, lake, iteration, rm_ids, "rrhf")
    prompts = _by_id(lake.rows("prompts"))
    groups: dict[str, tuple[list[dict], list[str], list[float], list[bool]]] = {}
    for r, reward in zip(rows, rewards):
        g = groups.setdefault(r["prompt_id"], (messages_of(prompts[r["prompt_id"]]), [], [], []))
        g[1].append(r["text"])
        g[2].append(reward)
        g[3].append(not cut_by_limit(r))  # a cut-off answer is learned without its end
    rc = cfg.policy_update.rrhf
    policy_id = content_id("policy", iteration, latest["id"], rm_ids, "rrhf",
                           sorted(r["id"] for r in rows), rc.model_dump())
    with tempfile.TemporaryDirectory() as tmp:
        ft = rrhf_finetune(policy_path(lake, latest), list(groups.values()), rc, tmp)
        uri = lake.put_artifact("policies", policy_id, tmp, {"parent": latest["id"]})
    metrics = {"reward": "R_c: the gated sigmoid of the two reward models' scores",
               "scoring": vars(engine.stats), "reward_mean_all": statistics.fmean(rewards),
               "reward_mean_best": statistics.fmean(max(g[2]) for g in groups.values()),
               "reward_all": rewards, "rrhf": ft,
               "cut_by_limit": sum(not e for g in groups.values() for e in g[3])}
    lake.write("policies", [{
        "id": policy_id, "iteration": iteration, "uri": uri, "parent_id": latest["id"],
        "method": "rrhf", "reward_model_id": rm_ids["helpfulness"],
        "safety_reward_model_id": rm_ids["safety"],
        "training_data": json.dumps({"samples": sorted(r["id"] for r in rows), **info}),
        "metrics": json.dumps(metrics),
    }], {"reward_models": rm_ids})
    return policy_id


def ppo_update(cfg: FlywheelConfig, lake: Lake, iteration: int, rm_ids: dict[str, str],
               policy_id: str | None) -> str:
    """PPO on top of the iteration's rejection-sampled policy `policy_id` (None: the latest
    promoted policy), which is also the
    frozen reference of the KL penalty: rollouts on the train prompts, each scored by both
    reward models through the scoring engine and combined as WHITEN(LOGIT(R_c)) by the
    reward-combination kernel, minus beta x per-token KL; held-out prompts for early stopping.
    Saves the policy (parent: `policy_id`) with its per-step log. Returns its id."""
    import torch

    from flywheel.devices import compute_device
    from flywheel.models import load_causal_lm, load_tokenizer
    from flywheel.ppo import ValueModel, train_ppo
    from flywheel.reward_model import RewardModel
    from flywheel.scoring import Group, combine

    pc = cfg.policy_update.ppo
    _require_both(rm_ids, "PPO")
    if policy_id is None:  # PPO alone: from the latest policy
        policy_id = current_policy(cfg, lake)["id"]
    prompts = ensure_prompts(cfg, lake)
    as_input = [{"messages": messages_of(p), "safety": p["criterion"] == "safety"}
                for p in prompts]
    train = [x for x, p in zip(as_input, prompts) if p["split"] == "train"]
    heldout = [x for x, p in zip(as_input, prompts) if p["split"] == "heldout"]
    start = _by_id(lake.rows("policies"))[policy_id]
    path = policy_path(lake, start)
    torch.manual_seed(pc.seed)
    tok = load_tokenizer(path)
    device = compute_device()  # train_ppo moves reference and critic to the actor's device
    actor = load_causal_lm(path, "float32").to(device)
    reference = load_causal_lm(path, "float32")
    critic = ValueModel.from_causal_lm(actor)
    engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
    rms = {k: RewardModel.load(lake.artifact_path("reward_models", rm_ids[k]))
           for k in ("helpfulness", "safety")}

    def score(batch, texts, _ids):
        groups = [Group(b["messages"], [t], b["safety"]) for b, t in zip(batch, texts)]
        help_ = engine.rewards(rms["helpfulness"], groups, desc="ppo: helpfulness RM")
        safe = engine.rewards(rms["safety"], groups, desc="ppo: safety RM")
        # the update's score is whitened per batch; R_c itself is logged and early-stops
        r_c = [gated_reward(h[0], s[0], g.safety) for g, h, s in zip(groups, help_, safe)]
        return combine(groups, help_, safe)[0], torch.tensor(r_c)

    # the engines kept open for later stages (two, ~4 GB each on a CPU) would share memory with
    # actor, critic, reference, both reward models and PPO's own engine: a three-iteration demo
    # on 24 GiB was killed for memory in PPO's second step; evaluation reopens what it needs
    close_samplers()
    with tempfile.TemporaryDirectory() as scratch:
        rollouts = None
        if cfg.sampling.backend == "vllm":  # its own engine: its weights follow the actor's
            from flywheel.ppo import VLLMRollouts
            from flywheel.sampling import VLLMSampler

            s = cfg.sampling
            rollouts = VLLMRollouts(VLLMSampler(
                path, dtype=s.dtype, max_model_len=s.max_model_len, seed=pc.seed,
                tensor_parallel_size=s.tensor_parallel_size, weight_sync=True,
                gpu_memory_utilization=s.gpu_memory_utilization), tok, scratch)
        try:
            out = train_ppo(actor, reference, critic, tok, train, score, pc, heldout,
                            desc="ppo", rollouts=rollouts)
        finally:
            if rollouts is not None:
                rollouts.sampler.close()
    new_id = content_id("policy", iteration, policy_id, rm_ids, "ppo", pc.model_dump())
    with tempfile.TemporaryDirectory() as tmp:
        actor.config.dtype = "float32"
        actor.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        uri = lake.put_artifact("policies", new_id, tmp, {"parent": policy_id})
    metrics = {"reward": "mean R_c of each step's rollouts (the update uses WHITEN(LOGIT(R_c)) "
                         "- beta * KL); held-out: mean R_c of the held-out rollouts",
               "ppo_steps": out["steps"], "heldout": out["heldout"],
               "best_step": out["best_step"], "scoring": vars(engine.stats),
               "rollouts": out.get("rollouts", {"engine": "transformers"})}
    lake.write("policies", [{
        "id": new_id, "iteration": iteration, "uri": uri, "parent_id": policy_id,
        "method": "ppo", "reward_model_id": rm_ids["helpfulness"],
        "safety_reward_model_id": rm_ids["safety"],
        "training_data": json.dumps({"train_prompts": len(train), "heldout_prompts":
                                     len(heldout), "settings": out["settings"]}),
        "metrics": json.dumps(metrics),
    }], {"reward_models": rm_ids})
    return new_id


def iteration_start(lake: Lake, policy: dict) -> dict:
    """The policy an iteration's candidate started from: its nearest ancestor made in an
    earlier iteration (rejection sampling then PPO make two policies in one iteration)."""
    policies = _by_id(lake.rows("policies"))
    current = policy
    while current["parent_id"]:
        current = policies[current["parent_id"]]
        if current["iteration"] < policy["iteration"] or current["method"] == "base":
            return current
    return current


# stage 5 -----------------------------------------------------------------------------------
def evaluate(cfg: FlywheelConfig, lake: Lake, iteration: int, candidate_id: str) -> dict:
    """Greedy answers of the candidate and the policy its iteration started from on held-out
    prompts, judged head to head."""
    prompts = [p for p in ensure_prompts(cfg, lake) if p["split"] == "heldout"]
    policies = _by_id(lake.rows("policies"))
    candidate = policies[candidate_id]
    baseline = iteration_start(lake, candidate)
    base = lineage_root(lake, candidate)
    answers, rows_of = {}, {}
    for policy in (candidate, baseline, base):
        if policy["id"] in rows_of:
            continue
        rows = _earlier_answers(cfg, lake, policy, prompts)
        if rows is None:
            sampler = _sampler(cfg, policy_path(lake, policy))
            rows = _sample_rows(cfg, lake, policy, prompts, iteration, "evaluation", 1,
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


def lineage_root(lake: Lake, policy: dict) -> dict:
    """The base policy a policy descends from."""
    policies = _by_id(lake.rows("policies"))
    while policy["parent_id"]:
        policy = policies[policy["parent_id"]]
    return policy


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
    for r in lake.rows("samples"):
        if r["policy_id"] == policy["id"] and r["purpose"] == "evaluation":
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
    prompts = _by_id(lake.rows("prompts"))
    engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
    raw = score_samples(lake, new + old, prompts, rm_ids, engine)
    rc = [gated_reward(h, s, prompts[r["prompt_id"]]["criterion"] == "safety")
          for r, h, s in zip(new + old, raw["helpfulness"], raw["safety"])]
    return {"reward_new": rc[: len(new)], "reward_old": rc[len(new):],
            "reward_mean_new": statistics.fmean(rc[: len(new)]) if new else None,
            "reward_mean_old": statistics.fmean(rc[len(new):]) if old else None}


# stage 6 -----------------------------------------------------------------------------------
def decide(cfg: FlywheelConfig, lake: Lake, iteration: int, batch_id: str,
           rm_ids: dict[str, str], evaluation: dict, stage_seconds: dict[str, float]) -> dict:
    """Promote or roll back; write the iteration row and its markdown report. Returns the row
    with the report's text under `report`."""
    from flywheel.report import iteration_plots, iteration_report, plot_path, used_reward_models

    promoted, why = gate(evaluation, cfg.evaluation.min_win_rate,
                         cfg.evaluation.max_harmful_increase,
                         cfg.evaluation.max_refusal_increase)
    metrics = {**evaluation, "stage_seconds": stage_seconds}
    row = {
        "id": content_id("iteration", iteration, evaluation["candidate"]),
        "iteration": iteration, "policy_in": evaluation["baseline"],
        "policy_out": evaluation["candidate"], "reward_model_id": rm_ids["helpfulness"],
        "safety_reward_model_id": rm_ids["safety"], "batch_id": batch_id,
        "promoted": promoted, "decision": why, "metrics": json.dumps(metrics),
    }
    relpath = f"reports/iteration-{iteration:04d}.md"
    row["report_uri"] = lake.url(relpath)
    plots = iteration_plots(lake, row, metrics, used_reward_models(lake, row))
    for name, svg in plots.items():  # next to the report, which links them by relative path
        lake.write_text(plot_path(iteration, name), svg)
    report = iteration_report(lake, row, metrics, {
        name: plot_path(iteration, name).removeprefix("reports/") for name in plots})
    lake.write_text(relpath, report)
    lake.write("iterations", [row], {"stage": "decide"})
    return {**row, "report": report}


def preflight(cfg: FlywheelConfig) -> Lake:
    """Everything a run needs, checked before it starts: the lake answers, the models are on
    disk, the prompts parse. Each failure is one FlywheelError naming its fix."""
    lake = open_lake(cfg)
    for name in (cfg.models.policy, cfg.models.reward_backbone, cfg.models.judge_embedder):
        models.resolve(name)
    load_prompts(cfg.prompts.path, cfg.prompts.limit)
    return lake
