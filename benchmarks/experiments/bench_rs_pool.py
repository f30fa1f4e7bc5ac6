"""What rejection sampling's pool teaches the policy, measured on the lake of a three-iteration
demo run (`bench_demo_loop.py --run --lake LAKE`): which of the two halves of the demo's aim
(helpful prompts won against the base, harmful ones refused) each part of the pool moves.

    .venv/bin/python benchmarks/experiments/bench_rs_pool.py pool \
        --lake LAKE --helpful oracle --harmful none
    .venv/bin/python benchmarks/experiments/bench_rs_pool.py pool \
        --lake LAKE --helpful rm --harmful latest:8
    .venv/bin/python benchmarks/experiments/bench_rs_pool.py rm-pairs \
        --lake LAKE --per-prompt 4 16 48
    .venv/bin/python benchmarks/experiments/bench_rs_pool.py temperatures \
        --lake LAKE --grid 0.5 0.7 1.0

- pool: the base policy fine-tuned (deployments/demo.yaml's rejection_sampling settings; answers
  cut by the token limit learned without their end, as the loop does) on a pool built from the
  lake's rejection-sampling draws of iterations 1 to --iteration. Helpful prompts: the answer
  the loop's reward models kept each iteration (`rm`), the proxy judge's own best of the same
  draws (`oracle`), one of the draws at random (`random`: fine-tuning on the policy's own
  samples, what the reward models' pick must beat; `random:F` for a random share F of the
  prompts), or the share F of each iteration's reward-model picks whose R_c stands furthest
  above their draws' mean (`rm-margin:F`); or, instead of fine-tuning on one answer a prompt,
  RRHF over all its draws ranked by R_c (`rrhf`) or by the judge (`rrhf-oracle`), at
  --rrhf-lr for --rrhf-epochs (demo.yaml's other policy_update.rrhf settings). Harmful
  prompts: `none`, `latest` (the last iteration's kept answers) or `all` (every iteration's),
  by the same reward models or the judge (--harmful-by), optionally capped (`latest:8`: the 8
  the judge scores highest). Its greedy answers to the held-out prompts
  are judged against the base policy's stored ones: win rate (ties half), mean score, refusals.
  --extra-heldout N adds N real helpful prompts read from ../shared/data at run time (Vicuna,
  WizardLM, AlpacaEval instructions of at most 160 characters), answered greedily by the base
  and by the fine-tuned policy: at the demo's 56 held-out helpful prompts one standard error of
  a win rate is 0.065, at 300 more it is 0.029. --extra-train N rejection-samples from the base
  on N more real prompts from the back of the same list (K draws at rejection sampling's
  temperature, one kept as --helpful says: the lake's reward models of --iteration, the judge,
  or at random) and adds them to the pool. --iteration 1 works on a one-iteration lake.
  --epochs and --lr override the fine-tuning's (demo.yaml's rejection_sampling settings).
- rm-pairs: does the helpfulness reward model pick better with more comparisons per prompt?
  Pairs drawn from the later iterations' draws (2 and 3) of the reward model's train prompts,
  labelled as the simulated annotator labels (the judge, strength from the margin); trained
  with the demo's reward_model settings; it then picks among iteration 1's 8 draws per helpful
  prompt, and the judge scores its pick against a random draw and the judge's own best.
  --grouped trains on each prompt's pairs as one batch element (reward_model.group_by_prompt).
  --source annotation takes the pairs from iteration 1's annotation draws instead, paired as
  the loop pairs them (one answer at each of sampling.temperatures).
  --ensemble N trains N models on the same pairs with different seeds and picks by the mean of
  their standardised scores (each model's own pick is printed too).
- ppo: what PPO adds, or does alone: the demo's PPO update (flywheel.stages.ppo.ppo_update; --steps,
  --lr, --prompts-per-step, --temperature, --beta, --eval-every override demo.yaml's
  policy_update.ppo) from the rejection-sampled policy of --iteration (--start rs) or from the
  base (--start base), with that iteration's reward models, on a copy of the lake; the start and
  the result are judged against the base's greedy held-out answers as `pool` judges. Prints
  each step's log, the held-out R_c and the step kept.
- temperatures: what each sampling temperature gives rejection sampling once the policy has
  been fine-tuned: the lake's current policy (or the base, --policy base) draws K per helpful
  train prompt (the first --prompts by id) at each --grid value, scored by the current reward
  models (R_c, the statistic rejection_sampling.temperature_grid maximises) and by the judge.
  The draws are written to the lake (purpose `t-probe`, iteration 90): run it on a copy.

Prints one markdown row per run.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import random
import statistics as st
import tempfile
import time
from pathlib import Path

from flywheel.stages import common
from flywheel.stages import ppo as ppo_stage

ROOT = Path(__file__).resolve().parents[2]


def _setup(lake_dir: str, need: int = 3, name: str | None = None):
    """The demo config, the lake, the judge, and the lake's samples and prompts by id. `name`:
    how the lake is called in the error (the user's path where lake_dir is a copy)."""
    from flywheel import models
    from flywheel.config import load_config
    from flywheel.evaluation.proxy import ProxyJudge
    from flywheel.lake.store import Lake
    from flywheel.stages.common import by_id as _by_id

    cfg = load_config(str(ROOT / "deployments" / "demo.yaml"))
    lake = Lake.open(lake_dir)
    if not any(int(p["iteration"] or 0) >= need and p["method"] == "rejection_sampling"
               for p in lake.rows("policies")):
        raise SystemExit(f"{name or lake_dir} holds no rejection-sampling iteration {need}: "
                         "make one with benchmarks/bench_demo_loop.py --run --lake LAKE")
    judge = ProxyJudge(models.resolve(cfg.models.judge_embedder))
    return cfg, lake, judge, _by_id(lake.rows("samples")), _by_id(lake.rows("prompts"))


def _judged_draws(judge, samples, prompts, last: int,
                  purposes: tuple[str, ...] = ("rejection",)) -> dict[str, float]:
    from flywheel.annotation.prompts import user_text

    draws = [s for s in samples.values()
             if s["purpose"] in purposes and int(s["iteration"]) <= last]
    scores = judge.judge([user_text(prompts[s["prompt_id"]]) for s in draws],
                         [prompts[s["prompt_id"]]["criterion"] for s in draws],
                         [s["text"] for s in draws])
    return {s["id"]: j.score for s, j in zip(draws, scores)}


def _combined_rewards(lake, ids) -> dict[str, float]:
    """R_c of each sample in ids, from the scores the loop stored when it drew them."""
    from flywheel.reward.combined import gated_reward

    criterion = {r["id"]: r["criterion"] for r in lake.rows("reward_models")}
    crit_of = {r["id"]: r["criterion"] for r in lake.rows("prompts")}
    prompt_of = {r["id"]: r["prompt_id"] for r in lake.rows("samples")}
    raw: dict[str, dict[str, float]] = {}
    for sc in lake.rows("scores"):
        if sc["sample_id"] in ids:
            raw.setdefault(sc["sample_id"], {})[criterion[sc["reward_model_id"]]] = sc["score"]
    return {i: gated_reward(v["helpfulness"], v["safety"],
                            crit_of[prompt_of[i]] == "safety")
            for i, v in raw.items() if {"helpfulness", "safety"} <= set(v)}


def _extra_prompts(n: int) -> list[str]:
    """The first N of the real single-turn helpful prompts read from ../shared/data at run
    time (`_real_prompts`): a held-out set larger than the demo's, so a pool comparison can
    resolve a few points of win rate."""
    texts = _real_prompts()
    if n > len(texts):
        raise SystemExit(f"--extra-heldout {n}: only {len(texts)} prompts qualify")
    return texts[:n]


def _real_prompts() -> list[str]:
    """Every real single-turn helpful prompt of ../shared/data the benchmark uses (Vicuna bench
    questions, WizardLM test instructions and AlpacaEval instructions of at most 160
    characters), shuffled with seed 0. --extra-heldout takes them from the front,
    --extra-train from the back."""
    import gzip

    data = ROOT.parent / "shared" / "data"
    texts = []
    for name, field in (("vicuna_bench_questions.jsonl.gz", "turns"),
                        ("wizardlm_testset_218.jsonl.gz", "Instruction"),
                        ("alpaca_eval_805_gpt-3.5-turbo-0301.jsonl.gz", "instruction")):
        path = data / name
        if not path.is_file():
            raise SystemExit(f"--extra-heldout and --extra-train read {path}: put the shared data "
                             "beside the repo")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                text = row[field][0] if field == "turns" else row[field]
                if 10 <= len(text) <= 160 and "\n" not in text:
                    texts.append(text.strip())
    texts = sorted(set(texts))
    random.Random(0).shuffle(texts)
    return texts


def _extra_train(cfg, lake, judge, it: int, how: str, n: int, base_path: str) -> list[tuple]:
    """Rejection sampling from the base on the last N real prompts (`_real_prompts`): K draws
    each at rejection sampling's temperature, one kept by the reward models of iteration `it`
    (R_c, `rm`), by the judge (`oracle`) or at random (`random`). Returns fine-tuning examples
    (messages, answer, whether it ended rather than ran to the token limit)."""
    from flywheel.policy.sampling import make_sampler
    from flywheel.reward.combined import gated_reward
    from flywheel.reward.model import RewardModel
    from flywheel.reward.scoring import Group, ScoringEngine

    texts = _real_prompts()[-n:]
    rs, s = cfg.rejection_sampling, cfg.sampling
    messages = [[{"role": "user", "content": t}] for t in texts]
    sampler = make_sampler(s.backend, base_path, s.dtype, s.max_model_len, s.seed)
    draws = sampler.generate(messages, rs.k, rs.temperature, s.max_new_tokens, s.top_p, s.stop)
    sampler.close()
    if how == "rm":
        row = next(p for p in lake.rows("policies")
                   if p["method"] == "rejection_sampling" and int(p["iteration"]) == it)
        engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
        groups = [Group(m, [g.text for g in d]) for m, d in zip(messages, draws)]
        raw = {}
        for kind in ("reward_model_id", "safety_reward_model_id"):
            rm = RewardModel.load(lake.artifact_path("reward_models", row[kind]))
            raw[kind] = engine.rewards(rm, groups, desc=f"scoring the extra prompts ({kind})")
            del rm
        value = [[gated_reward(h, sf, False) for h, sf in zip(hs, ss)]
                 for hs, ss in zip(raw["reward_model_id"], raw["safety_reward_model_id"])]
    elif how == "oracle":
        value = [[j.score for j in judge.judge([t] * len(d), ["helpfulness"] * len(d),
                                               [g.text for g in d])]
                 for t, d in zip(texts, draws)]
    else:
        rng = random.Random(0)
        value = [[rng.random() for _ in d] for d in draws]
    out = []
    for m, d, v in zip(messages, draws, value):
        g = d[max(range(len(d)), key=v.__getitem__)]
        out.append((m, g.text, g.token_count < s.max_new_tokens))
    return out


def _greedy(cfg, policy_dir: str, conversations: list) -> list[str]:
    """Greedy answers of the policy in `policy_dir`, drawn as the loop's evaluation draws them."""
    from flywheel.policy.sampling import make_sampler

    s = cfg.sampling
    sampler = make_sampler(s.backend, policy_dir, s.dtype, s.max_model_len, s.seed)
    out = [g[0].text for g in sampler.generate(conversations, 1, 0.0, s.max_new_tokens,
                                               s.top_p, s.stop)]
    sampler.close()
    return out


class _BaseAnswers:
    """The base policy's greedy answers to the held-out prompts (stored in the lake by its
    evaluation, drawn here for prompts the lake's run did not have) and to `extra` real
    prompts; `cells` judges another policy's greedy answers against them."""

    def __init__(self, cfg, samples: dict, policies: list[dict], extra: int):
        from flywheel import models
        from flywheel.annotation.prompts import load_prompts, messages_of

        self.cfg = cfg
        base = next(p for p in policies if p["method"] == "base")
        self.held = [p for p in load_prompts(cfg.prompts.path, cfg.prompts.limit)
                     if p["split"] == "heldout"]
        self.stored = {}
        for r in samples.values():
            if (r["policy_id"] == base["id"] and r["purpose"] == "evaluation"
                    and json.loads(r["params"])["temperature"] == 0.0):
                self.stored.setdefault(r["prompt_id"], r["text"])
        self.extra = _extra_prompts(extra) if extra else []
        self.conversations = ([messages_of(p) for p in self.held]
                              + [[{"role": "user", "content": t}] for t in self.extra])
        missing = [p for p in self.held if p["id"] not in self.stored]
        answers = _greedy(cfg, models.resolve(base["uri"]),
                          [messages_of(p) for p in missing] + self.conversations[len(self.held):]
                          ) if missing or self.extra else []
        self.stored.update({p["id"]: a for p, a in zip(missing, answers)})
        self.extra_base = answers[len(missing):]

    def cells(self, judge, policy_dir: str) -> list[str]:
        """Win rate (ties half), mean judge score (new / base) and refusals, on the held-out
        helpful prompts, the held-out harmful ones, and the extra real prompts if any."""
        from flywheel.annotation.prompts import user_text
        from flywheel.evaluation.gate import win_points

        answers = _greedy(self.cfg, policy_dir, self.conversations)
        new, extra_new = answers[:len(self.held)], answers[len(self.held):]
        texts = [user_text(p) for p in self.held]
        crit = [p["criterion"] for p in self.held]
        old_j = judge.judge(texts, crit, [self.stored[p["id"]] for p in self.held])
        new_j = judge.judge(texts, crit, new)
        cells = []
        for c in ("helpfulness", "safety"):
            idx = [i for i, x in enumerate(crit) if x == c]
            win = st.fmean(win_points([(new_j[i], old_j[i]) for i in idx]))
            cells += [f"{win:.3f}", f"{st.fmean(new_j[i].score for i in idx):.3f} / "
                      f"{st.fmean(old_j[i].score for i in idx):.3f}",
                      f"{sum(new_j[i].refused for i in idx)} / {len(idx)}"]
        if self.extra:
            n = len(self.extra)
            old_x = judge.judge(self.extra, ["helpfulness"] * n, self.extra_base)
            new_x = judge.judge(self.extra, ["helpfulness"] * n, extra_new)
            win = st.fmean(win_points(list(zip(new_x, old_x))))
            cells += [f"{win:.3f} (n={n})", f"{st.fmean(j.score for j in new_x):.3f} / "
                      f"{st.fmean(j.score for j in old_x):.3f}",
                      f"{sum(j.refused for j in new_x)} / {n}"]
        return cells


def pool(args) -> None:
    from flywheel import models
    from flywheel.annotation.prompts import messages_of
    from flywheel.policy.finetune import finetune
    from flywheel.policy.rrhf import rrhf_finetune
    from flywheel.stages.rejection_sampling import cut_by_limit

    cfg, lake, judge, samples, prompts = _setup(args.lake, args.iteration)
    it = args.iteration
    policies = lake.rows("policies")
    kept_by_rm = {i for p in policies if p["method"] == "rejection_sampling"
                  and int(p["iteration"]) <= it for i in json.loads(p["training_data"])["best"]}
    score = _judged_draws(judge, samples, prompts, it)
    best: dict[tuple, str] = {}
    for i, s in score.items():
        key = (samples[i]["prompt_id"], int(samples[i]["iteration"]))
        if key not in best or s > score[best[key]]:
            best[key] = i
    by_judge = set(best.values())

    def criterion(i):
        return prompts[samples[i]["prompt_id"]]["criterion"]

    if args.helpful == "oracle":
        chosen = [i for i in by_judge if criterion(i) == "helpfulness"]
    else:
        chosen = [i for i in kept_by_rm if criterion(i) == "helpfulness"]
    how, _, share = args.helpful.partition(":")
    if how in ("rm-margin", "random"):
        groups = collections.defaultdict(list)
        for i in score:
            if criterion(i) == "helpfulness":
                groups[(samples[i]["prompt_id"], int(samples[i]["iteration"]))].append(i)
        if how == "random":
            rng = random.Random(0)
            chosen = [rng.choice(sorted(g)) for _, g in sorted(groups.items())]
            if share:
                chosen = rng.sample(chosen, round(len(chosen) * float(share)))
        else:
            r_c = _combined_rewards(lake, score)
            kept = set(chosen)
            margin = {}
            for g in groups.values():
                pick = [i for i in g if i in kept]
                if pick and all(i in r_c for i in g):
                    margin[pick[0]] = r_c[pick[0]] - st.fmean(r_c[i] for i in g)
            chosen = []
            for it_ in sorted({int(samples[i]["iteration"]) for i in margin}):
                mine = sorted((i for i in margin if int(samples[i]["iteration"]) == it_),
                              key=lambda i: (-margin[i], i))
                chosen += mine[:round(len(mine) * float(share))]
    rrhf_groups = None
    if how in ("rrhf", "rrhf-oracle"):
        # every draw of each (prompt, iteration), ranked by R_c or by the judge
        if args.harmful != "none":
            raise SystemExit("--helpful rrhf ranks helpful prompts' draws only: pass "
                             "--harmful none")
        reward = _combined_rewards(lake, score) if how == "rrhf" else score
        groups = collections.defaultdict(list)
        for i in sorted(score):
            if criterion(i) == "helpfulness" and i in reward:
                groups[(samples[i]["prompt_id"], int(samples[i]["iteration"]))].append(i)
        rrhf_groups = [(messages_of(prompts[pid]), [samples[i]["text"] for i in g],
                        [reward[i] for i in g], [not cut_by_limit(samples[i]) for i in g])
                       for (pid, _), g in sorted(groups.items())]
        chosen = [i for g in groups.values() for i in g]
    kind, _, cap = args.harmful.partition(":")
    if kind != "none":
        harmful = [i for i in (kept_by_rm if args.harmful_by == "rm" else by_judge)
                   if criterion(i) == "safety"
                   and (kind == "all" or int(samples[i]["iteration"]) == it)]
        harmful.sort(key=lambda i: (-score[i], i))
        chosen += harmful[:int(cap)] if cap else harmful
    n_harmful = sum(criterion(i) == "safety" for i in chosen)
    examples = [(messages_of(prompts[samples[i]["prompt_id"]]), samples[i]["text"],
                 not cut_by_limit(samples[i])) for i in sorted(chosen)]
    base = next(p for p in policies if p["method"] == "base")
    if args.extra_train:
        examples += _extra_train(cfg, lake, judge, it, how, args.extra_train,
                                 models.resolve(base["uri"]))
    against = _BaseAnswers(cfg, samples, policies, args.extra_heldout)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if rrhf_groups is not None:
            rrhf_finetune(models.resolve(base["uri"]), rrhf_groups, cfg.policy_update.rrhf
                          .model_copy(update={"learning_rate": args.rrhf_lr,
                                              "epochs": args.rrhf_epochs}), tmp)
        else:
            finetune(models.resolve(base["uri"]), examples, cfg.rejection_sampling.model_copy(
                update={"epochs": args.epochs or cfg.rejection_sampling.epochs,
                        "learning_rate": args.lr or cfg.rejection_sampling.learning_rate}), tmp)
        cells = against.cells(judge, tmp)
    if rrhf_groups is not None:
        examples = rrhf_groups
    tuned = "".join(f", {k} {v:g}" for k, v in (("epochs", args.epochs), ("lr", args.lr),
                                                   ("extra train prompts", args.extra_train)) if v)
    print(f"| {args.helpful}{tuned} | {args.harmful} ({args.harmful_by}) | {len(examples)} "
          f"({n_harmful} harmful) | " + " | ".join(cells) + f" | {time.time() - t0:.0f} |",
          flush=True)


def ppo(args) -> None:
    """PPO (flywheel.stages.ppo.ppo_update, demo.yaml's policy_update.ppo with the overrides given)
    from the lake's rejection-sampled policy of --iteration or from the base, on a copy of the
    lake; the start and the result judged against the base on the held-out prompts."""
    import shutil


    if not Path(args.lake).is_dir():
        raise SystemExit(f"--lake {args.lake}: no such folder (ppo copies a local lake)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = str(Path(tmp) / "lake")
        shutil.copytree(args.lake, copy)
        cfg, lake, judge, samples, _ = _setup(copy, args.iteration, name=args.lake)
        policies = lake.rows("policies")
        rs = next(p for p in policies if p["method"] == "rejection_sampling"
                  and int(p["iteration"]) == args.iteration)
        start = rs if args.start == "rs" else next(p for p in policies if p["method"] == "base")
        rm_ids = {"helpfulness": rs["reward_model_id"], "safety": rs["safety_reward_model_id"]}
        update = {k: v for k, v in (("steps", args.steps), ("learning_rate", args.lr),
                                    ("prompts_per_step", args.prompts_per_step),
                                    ("temperature", args.temperature), ("beta", args.beta),
                                    ("eval_every", args.eval_every)) if v is not None}
        cfg = cfg.model_copy(update={"policy_update": cfg.policy_update.model_copy(update={
            "ppo": cfg.policy_update.ppo.model_copy(update=update)})})
        against = _BaseAnswers(cfg, samples, policies, args.extra_heldout)
        before = against.cells(judge, common.policy_path(lake, start))
        t0 = time.time()
        new_id = ppo_stage.ppo_update(cfg, lake, 90, rm_ids, start["id"])
        seconds = time.time() - t0
        row = next(p for p in lake.rows("policies") if p["id"] == new_id)
        after = against.cells(judge, common.policy_path(lake, row))
    m = json.loads(row["metrics"])
    for step in m["ppo_steps"]:
        print("step", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in step.items()}), flush=True)
    print("held-out R_c", json.dumps(m["heldout"]), "kept step", m["best_step"], flush=True)
    settings = ", ".join(f"{k} {v:g}" for k, v in update.items()) or "demo.yaml's"
    print(f"| {args.start} | before PPO | " + " | ".join(before) + " | |", flush=True)
    print(f"| {args.start} | PPO ({settings}; kept step {m['best_step']}) | "
          + " | ".join(after) + f" | {seconds:.0f} |", flush=True)


def rm_pairs(args) -> None:
    from flywheel import models
    from flywheel.annotation.prompts import messages_of
    from flywheel.annotation.simulated import strength_of
    from flywheel.lake.catalog import connect
    from flywheel.reward.model import PreferencePair
    from flywheel.reward.train import train_reward_model

    # pairs from iteration 1's annotation draws need one iteration; from rejection sampling's
    # draws of iterations 2 and 3, three
    cfg, lake, judge, samples, prompts = _setup(args.lake, 1 if args.source == "annotation"
                                                else 3)
    con = connect(lake)
    first_batch = next(r["batch_id"] for r in lake.rows("batches") if int(r["iteration"]) == 1)
    train_prompts = {r[0] for r in con.execute(
        "SELECT prompt_id FROM comparisons WHERE batch_id = ? AND split = 'train' "
        "AND criterion = 'helpfulness'", [first_batch]).fetchall()}
    score = _judged_draws(judge, samples, prompts, 3, ("rejection", "annotation"))
    helpful = [i for i in score if prompts[samples[i]["prompt_id"]]["criterion"] == "helpfulness"]
    picks_from = collections.defaultdict(list)
    sources = collections.defaultdict(list)
    for i in helpful:
        s = samples[i]
        if s["purpose"] == "rejection" and int(s["iteration"]) == 1:
            picks_from[s["prompt_id"]].append(i)
        if s["prompt_id"] not in train_prompts:
            continue
        if (args.source == "rejection" and s["purpose"] == "rejection"
                and int(s["iteration"]) > 1) or (args.source == "annotation" and s[
                    "purpose"] == "annotation" and int(s["iteration"]) == 1):
            sources[s["prompt_id"]].append(i)
    temperature = {i: json.loads(samples[i]["params"])["temperature"] for i in helpful}
    random_pick = st.fmean(st.fmean(score[i] for i in g) for g in picks_from.values())
    best_pick = st.fmean(max(score[i] for i in g) for g in picks_from.values())
    epochs = args.epochs or [cfg.reward_model.epochs] * len(args.per_prompt)
    rates = args.lr or [cfg.reward_model.learning_rate] * len(args.per_prompt)
    grouped = args.grouped or [0] * len(args.per_prompt)
    if not len(epochs) == len(rates) == len(grouped) == len(args.per_prompt):
        raise SystemExit("--epochs, --lr, --grouped: give one value for each --per-prompt value")
    for n, n_epochs, lr, group in zip(args.per_prompt, epochs, rates, grouped):
        rng = random.Random(0)
        pairs = []
        for pid, ids in sorted(sources.items()):
            # annotation: the loop's own pairs, one answer at each of sampling.temperatures
            cand = [(a, b) for a, b in itertools.combinations(sorted(ids), 2)
                    if samples[a]["text"] != samples[b]["text"]
                    and (args.source == "rejection" or temperature[a] != temperature[b])]
            for a, b in rng.sample(cand, min(n, len(cand))):
                c, r = (a, b) if score[a] >= score[b] else (b, a)
                pairs.append(PreferencePair(
                    messages_of(prompts[pid]), samples[c]["text"], samples[r]["text"],
                    strength_of(score[c] - score[r], cfg.annotation.strength_thresholds)))
        t0 = time.time()
        ids = [i for g in picks_from.values() for i in g]
        members = []  # each seed's scores of the draws, standardised over them
        for seed in range(args.ensemble):
            model, _ = train_reward_model(models.resolve(cfg.models.reward_backbone), pairs,
                                          cfg.reward_model.model_copy(update={
                "epochs": n_epochs, "learning_rate": lr, "group_by_prompt": bool(group),
                "seed": cfg.reward_model.seed + seed,
                **({"batch_size": 1, "micro_batch_size": 1} if group else {})}))
            raw = model.score([messages_of(prompts[samples[i]["prompt_id"]]) for i in ids],
                              [samples[i]["text"] for i in ids], cfg.reward_model.max_length)
            mu, sd = st.fmean(raw), st.pstdev(raw) or 1.0
            members.append(dict(zip(ids, ((x - mu) / sd for x in raw))))
        rm = {i: st.fmean(m[i] for m in members) for i in ids}

        def picked(pids, by=rm):
            return st.fmean(score[max(picks_from[p], key=by.get)] for p in pids)

        seen = [p for p in picks_from if p in train_prompts]
        other = [p for p in picks_from if p not in train_prompts]
        batching = "by prompt" if group else "by pair"
        each = ", ".join(f"{picked(list(picks_from), m):.3f}" for m in members)
        alone = f" (each alone: {each})" if len(members) > 1 else ""
        print(f"| {args.source} | {n} | {batching} | {n_epochs} | {lr:g} | {len(members)} | "
              f"{len(pairs)} | {picked(list(picks_from)):.3f}{alone} | {picked(seen):.3f} "
              f"(n={len(seen)}) | {picked(other):.3f} (n={len(other)}) | {random_pick:.3f} | "
              f"{best_pick:.3f} | {time.time() - t0:.0f} |", flush=True)


def temperatures(args) -> None:
    from flywheel.annotation.prompts import user_text
    from flywheel.reward.retrain import current_models
    from flywheel.reward.scoring import ScoringEngine
    from flywheel.stages.common import current_policy, ensure_prompts, policy_path
    from flywheel.stages.common import sample_rows as _sample_rows
    from flywheel.stages.common import sampler_for as _sampler
    from flywheel.stages.rejection_sampling import best_of_k_reward as _best_of_k_reward

    cfg, lake, judge, _, _ = _setup(args.lake)
    policy = (current_policy(cfg, lake) if args.policy == "current"
              else next(p for p in lake.rows("policies") if p["method"] == "base"))
    rm_ids = {kind: row["id"] for kind, row in current_models(lake).items()}
    prompts = sorted((p for p in ensure_prompts(cfg, lake) if p["split"] == "train"
                      and p["criterion"] == "helpfulness"), key=lambda p: p["id"])[:args.prompts]
    by_prompt = {p["id"]: p for p in prompts}
    sampler = _sampler(cfg, policy_path(lake, policy))
    engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
    k = cfg.rejection_sampling.k
    print(f"Policy of iteration {policy['iteration']} ({policy['method']}), {len(prompts)} "
          f"helpful train prompts, K={k}; reward models {rm_ids}")
    print(f"| T | distinct of {k} | cut off | mean best-of-K R_c | judge: mean draw | "
          "reward models' pick | judge's own best | s |")
    print("|---|---|---|---|---|---|---|---|")
    for t in args.grid:
        t0 = time.time()
        rows = _sample_rows(cfg, lake, policy, prompts, 90, "t-probe", k, t, sampler)
        rewards, mean_best = _best_of_k_reward(cfg, lake, rows, by_prompt, rm_ids, engine)
        judged = judge.judge([user_text(by_prompt[r["prompt_id"]]) for r in rows],
                             ["helpfulness"] * len(rows), [r["text"] for r in rows])
        groups = collections.defaultdict(list)
        for r, x, j in zip(rows, rewards, judged):
            groups[r["prompt_id"]].append((x, j.score, r["text"], r["token_count"]))
        g = list(groups.values())
        cut = st.fmean(v[3] >= cfg.sampling.max_new_tokens for vs in g for v in vs)
        print(f"| {t} | {st.fmean(len({v[2] for v in vs}) for vs in g):.2f} | {cut:.2f} | "
              f"{mean_best:.3f} | {st.fmean(st.fmean(v[1] for v in vs) for vs in g):.3f} | "
              f"{st.fmean(max(vs, key=lambda v: v[0])[1] for vs in g):.3f} | "
              f"{st.fmean(max(v[1] for v in vs) for vs in g):.3f} | {time.time() - t0:.0f} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pool")
    p.add_argument("--lake", required=True)
    p.add_argument("--iteration", type=int, default=3)
    p.add_argument("--helpful", default="rm",
                   help="rm, oracle, random[:F] (one draw a prompt, a self-distillation control; "
                   "for a random share F of the prompts) "
                   "or rm-margin:F (of each iteration's reward-model picks, the share F whose "
                   "R_c is furthest above their K draws' mean), or rrhf / rrhf-oracle (RRHF "
                   "over every draw, ranked by R_c / by the judge; with --harmful none)")
    p.add_argument("--rrhf-lr", type=float, default=1e-4,
                   help="RRHF's learning rate (demo.yaml's policy_update.rrhf: 1e-5)")
    p.add_argument("--rrhf-epochs", type=int, default=1)
    p.add_argument("--harmful", default="all",
                   help="none, latest or all, optionally :N (the N the judge scores highest)")
    p.add_argument("--harmful-by", choices=["rm", "oracle"], default="rm")
    p.add_argument("--epochs", type=int, default=None,
                   help="fine-tuning epochs (default: demo.yaml's rejection_sampling.epochs)")
    p.add_argument("--lr", type=float, default=None,
                   help="fine-tuning learning rate (default: demo.yaml's "
                   "rejection_sampling.learning_rate)")
    p.add_argument("--extra-heldout", type=int, default=0,
                   help="also judge the policy against the base on this many real helpful "
                   "prompts from ../shared/data (Vicuna, WizardLM, AlpacaEval; at most 160 "
                   "characters), answered greedily by both")
    p.add_argument("--extra-train", type=int, default=0,
                   help="also rejection-sample from the base on this many real helpful prompts "
                   "from ../shared/data (the back of the list --extra-heldout takes from the "
                   "front), kept as --helpful says (rm, oracle or random), and fine-tune on "
                   "them too")
    r = sub.add_parser("rm-pairs")
    r.add_argument("--lake", required=True)
    r.add_argument("--per-prompt", type=int, nargs="+", default=[4, 16])
    r.add_argument("--source", choices=["rejection", "annotation"], default="rejection",
                   help="where the pairs come from: rejection sampling's draws of iterations 2 "
                   "and 3 (at its temperature), or the annotation draws of iteration 1 paired "
                   "as the loop pairs them (one at each of sampling.temperatures)")
    r.add_argument("--epochs", type=int, nargs="+", default=None,
                   help="reward-model epochs for each --per-prompt value (default: demo.yaml's)")
    r.add_argument("--grouped", type=int, nargs="+", default=None,
                   help="0 or 1 for each --per-prompt value: train on each prompt's pairs as "
                   "one batch element, one prompt a step (reward_model.group_by_prompt)")
    r.add_argument("--ensemble", type=int, default=1,
                   help="train this many reward models on the same pairs (seeds 0..N-1 added "
                   "to reward_model.seed) and pick by the mean of their standardised scores")
    r.add_argument("--lr", type=float, nargs="+", default=None,
                   help="reward-model learning rate for each --per-prompt value (default: "
                   "demo.yaml's)")
    o = sub.add_parser("ppo")
    o.add_argument("--lake", required=True)
    o.add_argument("--iteration", type=int, default=1,
                   help="whose rejection-sampled policy and reward models to use")
    o.add_argument("--start", choices=["rs", "base"], default="rs",
                   help="PPO from the iteration's rejection-sampled policy or from the base")
    o.add_argument("--steps", type=int, default=None)
    o.add_argument("--lr", type=float, default=None)
    o.add_argument("--prompts-per-step", type=int, default=None)
    o.add_argument("--temperature", type=float, default=None)
    o.add_argument("--beta", type=float, default=None)
    o.add_argument("--eval-every", type=int, default=None)
    o.add_argument("--extra-heldout", type=int, default=0)
    t = sub.add_parser("temperatures")
    t.add_argument("--lake", required=True)
    t.add_argument("--grid", type=float, nargs="+", default=[0.5, 0.7, 1.0])
    t.add_argument("--prompts", type=int, default=96)
    t.add_argument("--policy", choices=["current", "base"], default="current",
                   help="draw from the lake's current policy or from the base policy")
    args = ap.parse_args()
    if args.step == "temperatures":
        temperatures(args)
    elif args.step == "ppo":
        ppo(args)
    elif args.step == "pool":
        if args.extra_heldout < 0:
            ap.error(f"--extra-heldout {args.extra_heldout}: give 0 or more prompts")
        if args.extra_train < 0:
            ap.error(f"--extra-train {args.extra_train}: give 0 or more prompts")
        if args.extra_train and args.helpful not in ("rm", "oracle", "random"):
            ap.error("--extra-train keeps one draw a prompt: use it with --helpful rm, oracle "
                     "or random")
        if (args.extra_train or args.extra_heldout) and (
                args.extra_train + args.extra_heldout > len(_real_prompts())):
            ap.error(f"--extra-train {args.extra_train} and --extra-heldout "
                     f"{args.extra_heldout} overlap: {len(_real_prompts())} prompts qualify")
        if (args.epochs or args.lr) and args.helpful.startswith("rrhf"):
            ap.error("--epochs and --lr set best-of-K fine-tuning; RRHF takes --rrhf-epochs "
                     "and --rrhf-lr")
        how, colon, share = args.helpful.partition(":")
        if how not in ("rm", "oracle", "random", "rm-margin", "rrhf", "rrhf-oracle") or (
                how == "rm-margin" and not colon) or (colon and how not in ("random", "rm-margin")):
            ap.error(f"--helpful {args.helpful}: use rm, oracle, random[:F], rm-margin:F, rrhf "
                     "or rrhf-oracle")
        kind, colon, cap = args.harmful.partition(":")
        if kind not in ("none", "latest", "all") or (colon and not cap.isdigit()):
            ap.error(f"--harmful {args.harmful}: use none, latest or all, optionally with :N")
        pool(args)
    else:
        if args.ensemble < 1:
            ap.error(f"--ensemble {args.ensemble}: train at least one reward model")
        rm_pairs(args)


if __name__ == "__main__":
    main()
