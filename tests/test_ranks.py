"""Training on several ranks, started by torchrun with the gloo backend on this CPU: two ranks
take the same steps as one (same losses, same saved weights to float tolerance) for the reward
model, fine-tuning and RRHF, with ZeRO-3 halving each rank's optimizer state; two "nodes" (two
launcher agents rendezvousing on localhost) train a reward model; a failed rank fails the call
with its own error and log.

Each launch costs a few seconds (two fresh processes import torch and transformers)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_reward_model import PAIRS

from flywheel.config import RejectionSamplingConfig, RewardModelConfig, RRHFConfig
from flywheel.config.resources import ResourcesConfig
from flywheel.distributed.launch import RankFailed
from flywheel.distributed.ranks import Micro, World, rank_micro_batches
from flywheel.policy.finetune import finetune, finetune_on_ranks
from flywheel.policy.rrhf import rrhf_finetune, rrhf_finetune_on_ranks
from flywheel.reward.model import RewardModel
from flywheel.reward.train import fit_reward_model, train_reward_model

TWO = {"ranks_per_node": 2}
# 9 pairs in steps of 4: 4, 4, then 1, which leaves rank 1 a weight-0 stand-in
RM = dict(batch_size=4, micro_batch_size=1, learning_rate=1e-3, max_length=64, seed=3)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_rank_shards_cover_each_step_once_with_equal_counts():
    """7 items on 3 ranks, micro-batches of 2: shards of ceil(7/3) = 3 -> [0,1,2] [3,4,5] [6];
    each rank runs ceil(3/2) = 2 micro-batches, so rank 2 runs one stand-in of weight 0."""
    items = list(range(10, 17))
    got = [rank_micro_batches(items, 2, World(r, 3)) for r in range(3)]
    assert got[0] == [Micro([10, 11], 2 / 7, False), Micro([12], 1 / 7, True)]
    assert got[1] == [Micro([13, 14], 2 / 7, False), Micro([15], 1 / 7, True)]
    assert got[2] == [Micro([16], 1 / 7, False), Micro([10], 0.0, True)]
    assert sum(m.weight for ms in got for m in ms) == pytest.approx(1)
    # one rank: the step's items in order
    assert [m.items for m in rank_micro_batches(items, 3, World())] == [
        [10, 11, 12], [13, 14, 15], [16]]


@pytest.fixture(scope="module")
def one_rank_rm(tiny_llama):
    model, metrics = train_reward_model(tiny_llama, (PAIRS * 3)[:9], RewardModelConfig(**RM))
    return model.state_dict(), metrics


def test_reward_model_on_two_ranks_matches_one(tiny_llama, one_rank_rm):
    from flywheel.training import on_step

    state, metrics = one_rank_rm
    heard = []  # rank 0's steps, relayed to this process's listener (the Prefect artifact's)
    token = on_step.set(lambda *step: heard.append(step))
    try:
        model, got = fit_reward_model(tiny_llama, (PAIRS * 3)[:9],
                                      RewardModelConfig(**RM, resources=TWO), desc="rm")
    finally:
        on_step.reset(token)
    assert heard and heard[-1] == ("rm", 3, 3)
    assert [r["rank"] for r in got["ranks"]] == [0, 1]
    assert all(r["seconds_per_step"] > 0 and r["peak_memory_bytes"] > 0 for r in got["ranks"])
    for key in ("loss_first", "loss_last", "train_accuracy_running"):
        assert got[key] == pytest.approx(metrics[key], rel=1e-5)
    start = RewardModel.from_backbone(tiny_llama).state_dict()  # the head aside, trained from
    moved = max_diff({k: v for k, v in state.items() if k in start},
                     {k: start[k] for k in state if k in start})
    assert moved > 1e-3  # the comparison below is of trained weights
    assert max_diff(model.state_dict(), state) < 1e-5


@pytest.mark.filterwarnings("ignore:`torch.distributed.\\w+` is deprecated:FutureWarning")
def test_zero3_on_two_ranks_matches_one_and_halves_optimizer_state(tiny_llama, one_rank_rm,
                                                                   tmp_path):
    """infra/deepspeed/zero3.json in fp32 with every parameter partitioned: each of the two
    ranks holds half of AdamW's moments (to the padding of the partitions), and the weights
    gathered on rank 0 are those of one plain rank."""
    from flywheel.training import DEEPSPEED_CONFIGS

    config = json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())
    config["bf16"]["enabled"] = False
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3-fp32.json").write_text(json.dumps(config))
    state, metrics = one_rank_rm
    model, got = fit_reward_model(tiny_llama, (PAIRS * 3)[:9], RewardModelConfig(
        **RM, resources=TWO, deepspeed=str(tmp_path / "zero3-fp32.json")))
    whole = metrics["optimizer_state_bytes"]
    for rank in got["ranks"]:
        assert rank["optimizer_state_bytes"] == pytest.approx(whole / 2, rel=0.02)
    # reduce-scatter sums in another order than one rank's backward: float tolerance
    assert got["loss_last"] == pytest.approx(metrics["loss_last"], rel=1e-4)
    assert max_diff(model.state_dict(), state) < 1e-4


def test_two_nodes_on_one_machine_train_a_reward_model(tiny_llama, one_rank_rm):
    """Two launcher agents, one rank each, rendezvous on localhost: the same model as one."""
    state, _ = one_rank_rm
    model, got = fit_reward_model(tiny_llama, (PAIRS * 3)[:9], RewardModelConfig(
        **RM, resources={"nodes": 2, "ranks_per_node": 1}))
    assert len(got["ranks"]) == 2
    assert max_diff(model.state_dict(), state) < 1e-5


def test_external_agent_joins_through_the_shared_job_folder(tiny_llama, one_rank_rm, tmp_path):
    """agents: external: the stage starts node 0's agent only; node 1's `rank-agent`
    (serve_node, here in a thread of this process) finds the job in the shared folder and
    joins the rendezvous."""
    import threading

    from flywheel.distributed.launch import _free_endpoint, serve_node

    joined = []
    agent = threading.Thread(target=lambda: joined.append(
        serve_node(tmp_path / "jobs", 1, once=True, poll_s=0.2, idle_timeout_s=120)))
    agent.start()
    state, _ = one_rank_rm
    model, got = fit_reward_model(tiny_llama, (PAIRS * 3)[:9], RewardModelConfig(
        **RM, resources={"nodes": 2, "ranks_per_node": 1, "agents": "external",
                         "job_root": str(tmp_path / "jobs"), "rdzv_endpoint": _free_endpoint()}))
    agent.join(timeout=60)
    assert joined == [1]
    assert max_diff(model.state_dict(), state) < 1e-5
    # the finished job's folder is gone from the shared folder (its weights with it)
    assert list((tmp_path / "jobs").iterdir()) == []


MSGS = [{"role": "user", "content": "How do I cook rice?"}]


def test_finetune_on_two_ranks_matches_one(tiny_llama, tmp_path):
    """Five examples of different lengths in steps of 4 (4, then 1): token-weighted micro-batches
    give the same step on two ranks."""
    examples = [(MSGS, "Rinse it, boil it." * k) for k in range(1, 6)]
    cfg = dict(learning_rate=3e-3, epochs=2, batch_size=4, micro_batch_size=1, max_length=64)
    one = finetune(tiny_llama, examples, RejectionSamplingConfig(**cfg), tmp_path / "one")
    two = finetune_on_ranks(tiny_llama, examples,
                            RejectionSamplingConfig(**cfg, resources=TWO), tmp_path / "two")
    assert two["loss_first"] == pytest.approx(one["loss_first"], rel=1e-5)
    assert two["loss_last"] == pytest.approx(one["loss_last"], rel=1e-5)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert max_diff(load_file(f"{tiny_llama}/model.safetensors"), a) > 1e-3
    assert max_diff(a, b) < 1e-5


@pytest.mark.filterwarnings("ignore:`torch.distributed.\\w+` is deprecated:FutureWarning")
def test_finetune_under_zero3_on_two_ranks_saves_the_gathered_policy(tiny_llama, tmp_path):
    """ZeRO-3 partitions the policy over the two ranks; rank 0 gathers the shards into one
    safetensors folder that transformers loads, with the weights one plain rank trains."""
    from transformers import AutoModelForCausalLM

    from flywheel.training import DEEPSPEED_CONFIGS

    config = json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())
    config["bf16"]["enabled"] = False
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3-fp32.json").write_text(json.dumps(config))
    examples = [(MSGS, "Rinse it, boil it." * k) for k in range(1, 6)]
    cfg = dict(learning_rate=3e-3, epochs=1, batch_size=4, micro_batch_size=1, max_length=64)
    one = finetune(tiny_llama, examples, RejectionSamplingConfig(**cfg), tmp_path / "one")
    two = finetune_on_ranks(tiny_llama, examples, RejectionSamplingConfig(
        **cfg, resources=TWO, deepspeed=str(tmp_path / "zero3-fp32.json")), tmp_path / "two")
    assert two["loss_last"] == pytest.approx(one["loss_last"], rel=1e-4)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    assert max_diff(loaded, plain) < 1e-4


@pytest.mark.parametrize("zero3", [False, True])
@pytest.mark.filterwarnings("ignore:`torch.distributed.\\w+` is deprecated:FutureWarning")
def test_rrhf_on_two_ranks_matches_one(tiny_llama, tmp_path, zero3):
    """Plain, and under ZeRO-3 (fp32, every parameter partitioned), where the log-probs come
    from the model's whole forward, since the output head is a shard outside it."""
    groups = [(MSGS, ["No.", "Rinse it and boil it.", "Rice."], [0.1, 0.9, 0.5]),
              (MSGS, ["Boil.", "I can't."], [0.7, 0.2]),
              (MSGS, ["Water, then heat.", "Cook.", "Hm."], [0.6, 0.3, 0.1])]
    cfg = dict(learning_rate=3e-3, epochs=2, batch_size=2, max_length=64)
    one = rrhf_finetune(tiny_llama, groups, RRHFConfig(**cfg), tmp_path / "one")
    ds = {}
    if zero3:
        from flywheel.training import DEEPSPEED_CONFIGS

        config = json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())
        config["bf16"]["enabled"] = False
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        (tmp_path / "zero3-fp32.json").write_text(json.dumps(config))
        ds = {"deepspeed": str(tmp_path / "zero3-fp32.json")}
    two = rrhf_finetune_on_ranks(tiny_llama, groups, RRHFConfig(**cfg, **ds, resources=TWO),
                                 tmp_path / "two")
    for key in ("loss_first", "loss_last", "rank_loss_last"):
        assert two[key] == pytest.approx(one[key], rel=1e-4 if zero3 else 1e-5, abs=1e-7)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert max_diff(a, b) < (1e-4 if zero3 else 1e-5)


def test_an_error_on_the_ranks_names_the_rank_and_its_message(tmp_path):
    """A backbone folder that does not exist: rank 0 raises while loading it, and the call fails
    with that rank, its error and the end of its log."""
    with pytest.raises(RankFailed) as e:
        fit_reward_model(str(tmp_path / "no-such-model"), PAIRS, RewardModelConfig(
            **RM, resources={**TWO, "job_root": str(tmp_path / "jobs")}))
    text = str(e.value)
    assert "reward_model on 2 rank(s)" in text
    assert "no-such-model" in text
    assert "failed:" in text and "last lines of its log" in text


def test_resources_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_NODES", "3")
    monkeypatch.setenv("FLYWHEEL_RANKS_PER_NODE", "4")
    assert ResourcesConfig().plan() == (3, 4)
    assert ResourcesConfig(ranks_per_node=2).plan() == (3, 2)  # the config wins
    monkeypatch.delenv("FLYWHEEL_NODES")
    monkeypatch.delenv("FLYWHEEL_RANKS_PER_NODE")
    assert ResourcesConfig().plan() == (1, torch.cuda.device_count() or 1)
    with pytest.raises(ValueError, match="job_root"):
        ResourcesConfig(agents="external")
