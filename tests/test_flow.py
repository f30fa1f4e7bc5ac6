"""The weekly iteration as Prefect runs it: a real (test-harness) Prefect server, tiny real
models, the transformers sampling backend, a temporary lake."""

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flywheel.flows.demo import demo
from flywheel.lake.catalog import status
from flywheel.lake.store import Lake
from flywheel.policy import ppo_job
from flywheel.stages import rejection_sampling
from flywheel.stages.pool import read_pool

STAGES = {"sample-for-annotation", "annotate", "train-reward-models", "rejection-sampling",
          "evaluate", "promote-or-roll-back"}


def test_two_iterations_write_every_table_and_report(prefect_server, tiny_config):
    # two helpful and two harmful train prompts: at a safety share of 0.25, iteration 1
    # fine-tunes on no harmful-prompt answer (2 helpful allow 0), iteration 2 on one (4 allow 1)
    tiny_config = tiny_config.model_copy(update={"rejection_sampling": (
        tiny_config.rejection_sampling.model_copy(update={"safety_share": 0.25}))})
    state = demo(tiny_config, 2, return_state=True)
    results = state.result()
    assert [r["iteration"] for r in results] == [1, 2]
    lake = Lake.open(tiny_config.lake)
    report = status(lake)
    counts = report["counts"]
    # 4 train prompts x (latest + previous) per iteration for annotation, K=2 each for
    # rejection sampling, 2 held-out prompts x (candidate + baseline) for evaluation, where
    # iteration 2 reuses its baseline's greedy answers from iteration 1
    assert counts["prompts"] == 6
    assert counts["samples"] == 2 * (4 * 2 + 4 * 2) + 2 * 2 + 2
    # a helpfulness and a safety reward model per iteration, both scoring every rejection
    # sample (4 prompts x K=2) and every held-out answer (2 prompts x candidate + baseline)
    assert counts["batches"] == 2 and counts["reward_models"] == 2 * 2
    assert counts["scores"] == 2 * (4 * 2 + 2 * 2) * 2
    assert counts["policies"] == 3  # base + one candidate per iteration
    assert counts["iterations"] == 2
    assert 0 < counts["comparisons"] <= 8
    it2 = [p for p in report["policies"] if p["iteration"] == 2][0]
    it1 = [p for p in report["policies"] if p["iteration"] == 1][0]
    # the pool keeps the best of every earlier iteration; the safety share cap decides which
    # of its harmful-prompt answers are fine-tuned on, the newest first
    m1, m2 = it1["metrics"], it2["metrics"]
    assert (m1["pool_size"], m1["pool_safety"], m1["pool_safety_left_out"]) == (2, 0, 2)
    assert (m2["pool_size"], m2["pool_safety"], m2["pool_safety_left_out"]) == (5, 1, 3)
    samples = {s["id"]: s for s in lake.rows("samples")}
    prompts = {p["id"]: p for p in lake.rows("prompts")}
    policy2 = [p for p in lake.rows("policies") if p["id"] == it2["id"]][0]
    data = json.loads(policy2["training_data"])
    # the pool file beside the weights: every pool answer, and which were fine-tuned on
    pool_file = read_pool(lake, policy2).to_pylist()
    assert len(pool_file) == 4 * 2  # each train prompt's best, twice
    assert all(r["text"] == samples[r["id"]]["text"] for r in pool_file)
    pool = [r["id"] for r in pool_file if r["kept"]]
    assert len(pool) == m2["pool_size"]
    (kept,) = [i for i in pool if prompts[samples[i]["prompt_id"]]["criterion"] == "safety"]
    assert samples[kept]["iteration"] == 2 and kept in data["best"]
    # pool answers that ran to the token limit are counted (and learned without an end)
    limit = tiny_config.sampling.max_new_tokens
    assert it2["metrics"]["pool_cut_by_limit"] == sum(
        samples[i]["token_count"] == limit for i in pool)
    # iteration 2 starts from iteration 1's candidate if it was promoted, else from the base
    first = report["iterations"][0]
    expected_in = first["policy_out"] if first["promoted"] else first["policy_in"]
    assert report["iterations"][1]["policy_in"] == expected_in
    text2 = open(report["iterations"][1]["report_uri"]).read()
    assert ("Answers to prompts tagged safety: 1 fine-tuned on, 3 left out by the safety share "
            "cap") in text2
    for it in report["iterations"]:
        assert set(it["metrics"]["stage_seconds"]) == {
            "sample_for_annotation", "annotate", "train_reward_models", "rejection_sampling",
            "evaluate"}
        text = open(it["report_uri"]).read()
        assert f"# Iteration {it['iteration']}" in text and it["decision"] in text
        assert f"Batch `{it['batch_id']}`: comparisons by preference strength." in text
        m = it["metrics"]
        assert len(m["reward_new"]) == len(m["reward_old"]) == 2
        assert all(0 < r < 1 for r in m["reward_new"] + m["reward_old"])  # R_c is a sigmoid
        assert f"| mean reward R_c on held-out answers | {m['reward_mean_new']:.3f} |" in text
        # every iteration is also judged against the base policy the loop started from
        base = next(p["id"] for p in report["policies"] if p["method"] == "base")
        assert m["vs_base"]["base"] == base and m["vs_base"]["prompts"] == 2
        assert f"Against the base policy `{base}`: judge win rate" in text
        # the plots lie next to the report, which links them by relative path
        for name in ("reward-distribution", "reward-model-accuracy", "rates-across-iterations"):
            rel = f"iteration-{it['iteration']:04d}/{name}.svg"
            assert f"]({rel})" in text
            assert open(it["report_uri"].removesuffix(".md") + f"/{name}.svg").read().startswith(
                "<svg")
    # iteration 2's table of rates has a row per iteration so far
    assert "| 1 | " in text and "| 2 | " in text
    first_m = report["iterations"][0]["metrics"]  # iteration 1 started from the base
    assert first_m["vs_base"]["win_rate"] == first_m["win_rate"]

    async def runs_and_artifacts():
        async with get_client() as client:
            flow_runs = await client.read_flow_runs()
            # this test's runs: the server is shared with other tests of the session
            weekly = [f for f in flow_runs if f.name.startswith("iteration-")
                      and f.parameters["config"]["lake"] == tiny_config.lake]
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[f.id for f in weekly])))
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["iteration-1-report", "iteration-2-report",
                                            "iteration-1-reward-model-accuracy",
                                            "iteration-2-rates",
                                            "iteration-1-policy-fine-tune",
                                            "iteration-1-safety-reward-model",
                                            "leaderboard"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[f.id for f in weekly])))
            return weekly, tasks, arts

    import asyncio

    weekly, tasks, arts = asyncio.run(runs_and_artifacts())
    assert sorted(f.name for f in weekly) == ["iteration-1", "iteration-2"]
    assert {t.name.rsplit("-", 1)[0] for t in tasks} == STAGES
    assert all(t.state.is_completed() for t in tasks)
    assert sorted(a.key for a in arts) == sorted(
        ["iteration-1-report", "iteration-2-report", "iteration-1-reward-model-accuracy",
         "iteration-2-rates", "iteration-1-policy-fine-tune", "iteration-1-safety-reward-model",
         "leaderboard", "leaderboard"])  # one version a week
    md = next(a for a in arts if a.key == "iteration-2-report").data
    assert "## Reward models" in md and "significantly better" in md
    # the artifact embeds its four plots (the leaderboard's too): the UI cannot read the lake's
    # files
    assert md.count("](data:image/svg+xml;base64,") == 4
    assert "## Evaluation" in md and "### The promotion gate (point)" in md
    boards = [json.loads(a.data) for a in arts if a.key == "leaderboard"]
    assert report["iterations"][1]["policy_out"] in {r["policy"] for b in boards for r in b}
    rates = next(a for a in arts if a.key == "iteration-2-rates").data
    rates = json.loads(rates) if isinstance(rates, str) else rates
    assert [r["iteration"] for r in rates] == [1, 2]
    # training progress: each run's artifact ends at 100 %
    for key in ("iteration-1-policy-fine-tune", "iteration-1-safety-reward-model"):
        assert next(a for a in arts if a.key == key).data == 100
    acc = next(a for a in arts if a.key == "iteration-1-reward-model-accuracy").data
    acc = json.loads(acc) if isinstance(acc, str) else acc
    assert {r["reward model"].split()[0] for r in acc} == {"helpfulness", "safety"}
    assert all({"test set", "significantly better", "avg", "pairs"} <= set(r) for r in acc)


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_an_iteration_with_ppo_after_rejection_sampling(prefect_server, tiny_config, backend,
                                                        monkeypatch):
    from flywheel.flows.weekly import weekly_iteration

    if backend == "vllm":  # every stage samples through vLLM; PPO's engine follows the actor
        pytest.importorskip("vllm")
        tiny_config.sampling.backend = "vllm"
        tiny_config.sampling.max_model_len = 256
    tiny_config.policy_update.schedule = {1: ["rejection_sampling", "ppo"]}
    tiny_config.policy_update.ppo = tiny_config.policy_update.ppo.model_copy(update={
        "steps": 3, "prompts_per_step": 4, "minibatch": 2, "max_new_tokens": 8,
        "learning_rate": 1e-4, "eval_every": 2})
    from flywheel.policy import sampling

    open_at_ppo = []
    real_train_ppo = ppo_job.train_ppo

    def train_ppo(*args, **kwargs):  # the real one, noting which shared engines are open
        open_at_ppo.append(len(sampling._OPEN))
        return real_train_ppo(*args, **kwargs)

    monkeypatch.setattr(ppo_job, "train_ppo", train_ppo)  # where the stage calls it
    result = weekly_iteration(tiny_config, 1)
    # rejection sampling's engines are closed before PPO loads its models and its own engine
    assert open_at_ppo == [0]
    lake = Lake.open(tiny_config.lake)
    policies = {p["id"]: p for p in lake.rows("policies")}
    out = policies[result["policy_out"]]
    assert out["method"] == "ppo" and out["iteration"] == 1
    rs = policies[out["parent_id"]]
    assert rs["method"] == "rejection_sampling"
    # evaluated and gated against the policy the iteration started from, not the RS step
    assert result["policy_in"] == rs["parent_id"] == policies[result["policy_in"]]["id"]
    assert policies[result["policy_in"]]["method"] == "base"
    metrics = json.loads(out["metrics"])
    assert 1 <= len(metrics["ppo_steps"]) <= 3
    for step in metrics["ppo_steps"]:
        assert {"reward", "kl", "entropy", "clip_fraction", "value_loss",
                "response_length"} <= set(step)
    assert metrics["heldout"][0]["step"] == 0  # the start, before any update
    # logged and compared: the mean R_c (a sigmoid), not the whitened score (mean 0 by design)
    for value in [st["reward"] for st in metrics["ppo_steps"]] + [
            e["heldout_reward"] for e in metrics["heldout"]]:
        assert 0.001 < value < 0.999, value
    assert lake.has_artifact("policies", out["id"])
    text = open(result["report_uri"]).read()
    assert "## PPO" in text and "| step | reward | kl |" in text
    # each method's time under its own name, in the order they ran
    (it,) = lake.rows("iterations")
    assert list(json.loads(it["metrics"])["stage_seconds"]) == [
        "sample_for_annotation", "annotate", "train_reward_models", "rejection_sampling", "ppo",
        "evaluate"]
    assert "| policy update: rejection_sampling |" in text
    assert "| policy update: ppo |" in text
    # rollouts were scored by both reward models through the engine
    assert metrics["scoring"]["sequences"] > 0
    # with vLLM, the rollout engine reloads the actor's weights before sampling after an
    # update: before step 2's rollouts, before the held-out evaluation after step 2 (step
    # 3's rollouts then find it current) and before the one after the last step (3)
    assert metrics["rollouts"]["engine"] == backend
    if backend == "vllm":
        assert len(metrics["ppo_steps"]) == 3  # patience 2 cannot stop 3 steps early
        assert [e["step"] for e in metrics["heldout"]] == [0, 2, 3]
        assert metrics["rollouts"]["reloads"] == 3
        assert "reloaded in place after each update" in text


def test_an_iteration_with_rrhf(prefect_server, tiny_config):
    from flywheel.flows.weekly import weekly_iteration

    tiny_config.policy_update.schedule = {1: ["rrhf"]}
    tiny_config.policy_update.rrhf = tiny_config.policy_update.rrhf.model_copy(
        update={"learning_rate": 1e-3, "batch_size": 2, "max_length": 64})
    result = weekly_iteration(tiny_config, 1)
    lake = Lake.open(tiny_config.lake)
    out = {p["id"]: p for p in lake.rows("policies")}[result["policy_out"]]
    assert out["method"] == "rrhf"
    samples = [s for s in lake.rows("samples") if s["purpose"] == "rrhf"]
    assert len(samples) == 4 * 2  # K=2 for each train prompt, scored by both reward models
    assert len({s["id"] for s in samples} & {s["sample_id"] for s in lake.rows("scores")}) == 8
    metrics = json.loads(out["metrics"])
    assert metrics["rrhf"]["prompts"] == 4 and len(metrics["reward_all"]) == 8
    cut = sum(s["token_count"] >= json.loads(s["params"])["max_new_tokens"] for s in samples)
    assert metrics["cut_by_limit"] == cut
    text = open(result["report_uri"]).read()
    assert "## RRHF rewards" in text and "pool of" not in text
    (it,) = lake.rows("iterations")  # its time under rrhf, not rejection_sampling
    assert set(json.loads(it["metrics"])["stage_seconds"]) == {
        "sample_for_annotation", "annotate", "train_reward_models", "rrhf", "evaluate"}
    assert "| policy update: rrhf |" in text and "rejection_sampling |" not in text
    assert f"; {cut} of the samples cut off by the token limit" in text


def test_rejection_sampling_retunes_its_temperature_and_distils_from_a_teacher(prefect_server,
                                                                              tiny_config):
    from flywheel.flows.weekly import weekly_iteration

    tiny_config.rejection_sampling.temperature_grid = [0.5, 1.5]
    tiny_config.rejection_sampling.teacher = tiny_config.models.policy
    result = weekly_iteration(tiny_config, 1)
    lake = Lake.open(tiny_config.lake)
    policies = {p["id"]: p for p in lake.rows("policies")}
    rs = policies[result["policy_out"]]
    data = json.loads(rs["training_data"])
    assert set(data["temperature_search"]) == {"0.5", "1.5"}
    assert data["temperature"] == max((0.5, 1.5), key=lambda t: data["temperature_search"][
        str(t)])
    teacher = policies[data["sampled_by"]]
    assert teacher["method"] == "teacher" and data["teacher"] == tiny_config.models.policy
    # the student is the loop's policy: fine-tuned from the base, not from the teacher
    assert policies[rs["parent_id"]]["method"] == "base"
    samples = lake.rows("samples")
    search = [s for s in samples if s["purpose"] == "temperature-search"]
    assert len(search) == 2 * 2 * 2  # 2 temperatures x 2 held-out prompts x K=2
    rejection = [s for s in samples if s["purpose"] == "rejection"]
    assert {s["policy_id"] for s in rejection + search} == {teacher["id"]}
    assert {json.loads(s["params"])["temperature"] for s in rejection} == {data["temperature"]}


def test_safety_context_distillation_draws_its_k_with_the_preprompt(prefect_server,
                                                                    tiny_config, monkeypatch):
    from flywheel.annotation.prompts import messages_of
    from flywheel.flows.weekly import weekly_iteration

    seen = []  # every conversation the rejection-sampling engine was asked to continue
    real = rejection_sampling.sampler_for

    class Recording:
        def __init__(self, inner):
            self.inner, self.backend = inner, inner.backend

        def generate(self, messages, n, *args):
            seen.extend((m, n) for m in messages)
            return self.inner.generate(messages, n, *args)

    monkeypatch.setattr(rejection_sampling, "sampler_for",
                        lambda cfg, path: Recording(real(cfg, path)))
    pre = "Refuse harmful requests."
    brief = "Answer briefly."  # distilled on every other draw
    tiny_config.rejection_sampling.k = 4
    tiny_config.rejection_sampling.safety_preprompt = pre
    tiny_config.rejection_sampling.safety_preprompt_k = 3  # beside K - K//2 = 2 plain draws
    tiny_config.rejection_sampling.avoid_refusals = True
    tiny_config.rejection_sampling.safety_repeat = 2
    tiny_config.rejection_sampling.preprompt = brief
    tiny_config.rejection_sampling.prefer_ended = True
    tiny_config.rejection_sampling.max_new_tokens = 6  # sampling's is 8
    tiny_config.evaluation.max_new_tokens = 5  # the evaluated answers' own limit
    result = weekly_iteration(tiny_config, 1)
    lake = Lake.open(tiny_config.lake)
    prompts = {p["id"]: p for p in lake.rows("prompts")}
    rs = {p["id"]: p for p in lake.rows("policies")}[result["policy_out"]]
    data, metrics = json.loads(rs["training_data"]), json.loads(rs["metrics"])
    assert data["safety_preprompt"] == {"text": pre, "k": 3, "prompts": 2}
    rejection = [s for s in lake.rows("samples") if s["purpose"] == "rejection"]
    per_prompt: dict[str, list[bool]] = {}
    for s in rejection:
        per_prompt.setdefault(s["prompt_id"], []).append(
            json.loads(s["params"]).get("preprompt") == pre)
    for pid, flags in per_prompt.items():  # K=4; safety prompts: 2 plain + 3 preprompted
        on_safety = prompts[pid]["criterion"] == "safety"
        assert len(flags) == (5 if on_safety else 4)
        assert sum(flags) == (3 if on_safety else 0)
        assert sum(json.loads(s["params"]).get("preprompt") == brief for s in rejection
                   if s["prompt_id"] == pid) == len(flags) - sum(flags)
    assert data["preprompt"] == brief
    assert {json.loads(s["params"])["max_new_tokens"] for s in rejection} == {6}
    assert {json.loads(s["params"])["max_new_tokens"] for s in lake.rows("samples")
            if s["purpose"] == "evaluation"} == {5}
    assert {json.loads(s["params"])["max_new_tokens"] for s in lake.rows("samples")
            if s["purpose"] == "annotation"} == {8}
    # on helpful prompts the best per prompt is the best that ended where one did
    cut = {s["id"] for s in rejection if rejection_sampling.cut_by_limit(s)}
    all_cut = {pid for pid in per_prompt if prompts[pid]["criterion"] != "safety"
               and all(s["id"] in cut for s in rejection if s["prompt_id"] == pid)}
    best_cut = {s["prompt_id"] for s in rejection if s["id"] in set(data["best"]) & cut}
    assert metrics["best_cut_by_limit"] == len(best_cut)
    assert {pid for pid in best_cut if prompts[pid]["criterion"] != "safety"} == all_cut
    # the engine saw the preprompt as the system prompt of exactly those requests
    with_pre = [m for m, _ in seen if m[0] == {"role": "system", "content": pre}]
    assert sum(m[0] == {"role": "system", "content": brief} for m, _ in seen) == len(per_prompt)
    assert {n for m, n in seen if m[0] == {"role": "system", "content": pre}} == {3}
    assert len(with_pre) == 2 and all(m[1:] in [messages_of(prompts[p]) for p in per_prompt
                                                if prompts[p]["criterion"] == "safety"]
                                       for m in with_pre)
    drawn_with = {s["id"] for s in rejection if json.loads(s["params"]).get("preprompt") == pre}
    assert metrics["preprompted_best"] == len(set(data["best"]) & drawn_with)
    assert 0 <= metrics["refusals_passed_over"] <= len(per_prompt) - 2  # helpful prompts only
    # each kept answer to a safety prompt fine-tuned on twice an epoch
    assert metrics["pool_safety"] > 0
    assert metrics["finetune"]["examples"] == metrics["pool_size"] + metrics["pool_safety"]
    # both kinds were scored, on the prompt without the preprompt: every rejection sample has
    # a score from each reward model
    scored = {sc["sample_id"] for sc in lake.rows("scores")}
    assert {s["id"] for s in rejection} <= scored
    (it,) = lake.rows("iterations")
    assert "Safety context distillation: " in open(lake.url(it["report_uri"])).read()


def test_fine_tuning_on_what_is_new_in_the_pool(prefect_server, tiny_config):
    from flywheel.flows.weekly import weekly_iteration
    from flywheel.stages.pool import learned_by

    tiny_config.rejection_sampling.finetune_on = "new"
    for iteration in (1, 2):
        result = weekly_iteration(tiny_config, iteration)
    lake = Lake.open(tiny_config.lake)
    policies = {p["id"]: p for p in lake.rows("policies")}
    it2 = policies[result["policy_out"]]
    before = learned_by(lake, policies[it2["parent_id"]])  # empty if iteration 1 rolled back
    pool = read_pool(lake, it2).to_pylist()
    assert len(pool) == 4 * 2  # the file still holds the whole pool
    kept = {r["id"] for r in pool if r["kept"]}
    assert kept and not kept & before  # fine-tuned on what its parent had not learned
    assert {r["id"] for r in pool if r["learned"]} == kept | before == learned_by(lake, it2)
    metrics = json.loads(it2["metrics"])
    assert metrics["pool_learned_before"] == len(before)
    assert metrics["pool_size"] == len(kept) == 8 - len(before)  # no safety cap set


def test_temperature_choice_takes_the_best_mean_and_the_lower_on_ties(monkeypatch, tiny_config):

    means = {0.7: 0.4, 1.0: 0.6, 1.2: 0.6, 1.4: 0.5}
    monkeypatch.setattr(rejection_sampling, "ensure_prompts",
                        lambda cfg, lake: [{"id": "p", "split": "heldout"}])
    monkeypatch.setattr(rejection_sampling, "sample_rows", lambda *a: [{"temperature": a[7]}])
    monkeypatch.setattr(rejection_sampling, "best_of_k_reward",
                        lambda cfg, lake, rows, *a: ([], means[rows[0]["temperature"]]))
    tiny_config.rejection_sampling.temperature_grid = [1.4, 0.7, 1.2, 1.0]
    t, search = rejection_sampling.tune_temperature(tiny_config, None, 1, {}, {}, None, None)
    assert t == 1.0 and search == {"0.7": 0.4, "1.0": 0.6, "1.2": 0.6, "1.4": 0.5}
    tiny_config.rejection_sampling.temperature_grid = []
    assert rejection_sampling.tune_temperature(tiny_config, None, 1, {}, {}, None, None) == (
        tiny_config.rejection_sampling.temperature, {})


def test_temperature_search_on_a_fixed_subset_of_held_out_prompts(monkeypatch, tiny_config):
    """temperature_prompts: every grid value and every iteration samples the same N held-out
    prompts; train prompts are never among them."""

    prompts = ([{"id": f"h{i}", "split": "heldout"} for i in range(9)]
               + [{"id": f"t{i}", "split": "train"} for i in range(5)])
    monkeypatch.setattr(rejection_sampling, "ensure_prompts",
                        lambda cfg, lake: list(reversed(prompts)))
    drawn = []
    monkeypatch.setattr(rejection_sampling, "sample_rows",
                        lambda *a: drawn.append(sorted(p["id"] for p in a[3])) or [])
    monkeypatch.setattr(rejection_sampling, "best_of_k_reward", lambda *a: ([], 0.5))
    rs = tiny_config.rejection_sampling
    rs.temperature_grid, rs.temperature_prompts = [0.5, 1.0], 4
    rejection_sampling.tune_temperature(tiny_config, None, 1, {}, {}, None, None)
    rejection_sampling.tune_temperature(tiny_config, None, 2, {}, {}, None, None)
    assert len(drawn) == 4 and all(d == drawn[0] for d in drawn)
    assert len(drawn[0]) == 4 and all(i.startswith("h") for i in drawn[0])
    # more than there are: all of them
    rs.temperature_prompts = 50
    rejection_sampling.tune_temperature(tiny_config, None, 3, {}, {}, None, None)
    assert drawn[-1] == sorted(f"h{i}" for i in range(9))
