"""PPO on two ranks (torchrun, gloo on this CPU) takes the steps one rank takes: each rank
samples and scores half of every step's prompts, the reward and the advantages are whitened
over both, and the minibatches, cut from the whole batch in the same shuffled order, are
spread over the ranks. Same step logs, same held-out evaluations and the same saved weights,
to float tolerance. Rollouts are greedy (temperature 0) so that both runs answer alike."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from flywheel.config import validate_config
from flywheel.policy.ppo_job import ppo_on_ranks, run_ppo
from flywheel.reward.model import RewardModel

PROMPTS = ["How do I cook rice?", "Name a colour.", "What is two plus two?",
           "Say something kind.", "Where is Lisbon?", "Write one word."]


@pytest.fixture(scope="module")
def reward_models(tiny_llama, tmp_path_factory):
    """Two reward models on the tiny backbone, their heads drawn from different seeds."""
    out = {}
    for seed, kind in enumerate(("helpfulness", "safety")):
        torch.manual_seed(seed + 11)
        path = tmp_path_factory.mktemp(kind)
        RewardModel.from_backbone(tiny_llama).save(path, {"kind": kind})
        out[kind] = str(path)
    return out


def _config(tiny_llama, ranks: int):
    # 6 prompts a step, minibatches of 4 (4, then 2): rows cut in a shuffled order, so a
    # minibatch holds rows of both ranks, or of one only and the other runs a stand-in
    return validate_config({
        "models": {"policy": tiny_llama, "reward_backbone": tiny_llama},
        "sampling": {"backend": "transformers"},
        "reward_model": {"max_length": 64},
        "policy_update": {"ppo": {
            "steps": 3, "prompts_per_step": 6, "minibatch": 4, "learning_rate": 1e-3,
            "critic_learning_rate": 1e-3, "beta": 0.05, "max_new_tokens": 4,
            "temperature": 0, "eval_every": 2, "patience": 5,
            "resources": {"ranks_per_node": ranks}}},
    })


@pytest.mark.parametrize("frozen", ["replicated", "sharded"])
def test_ppo_on_two_ranks_matches_one(tiny_llama, reward_models, tmp_path, frozen):
    """`frozen: sharded` keeps half of the reference's and each reward model's weights on each
    rank and gathers one whole while it scores: the same steps as replicated ones. Held-out:
    three prompts on two ranks (one scores one, the other two); sharded, one prompt, so that
    rank 1 has none and still joins the reward models' gathers."""
    train = [{"messages": [{"role": "user", "content": p}], "safety": i % 3 == 0}
             for i, p in enumerate(PROMPTS)]
    heldout = [{"messages": [{"role": "user", "content": "Tell me about tea."}],
                "safety": False},
               {"messages": [{"role": "user", "content": "How do I pick a lock?"}],
                "safety": True},
               {"messages": [{"role": "user", "content": "Hello!"}], "safety": False}]
    if frozen == "sharded":
        heldout = heldout[:1]
    one = run_ppo(_config(tiny_llama, 1), tiny_llama, reward_models, train, heldout,
                  tmp_path / "one")
    cfg = _config(tiny_llama, 2)
    cfg.policy_update.ppo.frozen = frozen
    two = ppo_on_ranks(cfg, tiny_llama, reward_models, train, heldout, tmp_path / "two")
    assert [r["rank"] for r in two["ranks"]] == [0, 1]
    assert len(two["steps"]) == len(one["steps"]) == 3
    for a, b in zip(one["steps"], two["steps"]):
        for key in ("reward", "kl", "response_length", "policy_loss", "value_loss",
                    "clip_fraction", "entropy", "approx_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert [e["step"] for e in two["heldout"]] == [e["step"] for e in one["heldout"]] == [0, 2, 3]
    for a, b in zip(one["heldout"], two["heldout"]):
        assert b["heldout_reward"] == pytest.approx(a["heldout_reward"], rel=1e-5)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    start = load_file(f"{tiny_llama}/model.safetensors")
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # it trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow
def test_ppo_on_two_ranks_samples_from_a_vllm_engine_per_rank(tiny_llama, reward_models,
                                                              tmp_path):
    """sampling.backend vllm on two ranks: each rank runs its own engine (data parallel), and
    after every update each engine reloads the actor's weights in place, written by its own
    rank (transformers' save_pretrained would write on rank 0 only)."""
    pytest.importorskip("vllm")
    cfg = _config(tiny_llama, 2)
    cfg.sampling.backend = "vllm"
    cfg.sampling.max_model_len = 256
    cfg.sampling.dtype = "float32"
    cfg.policy_update.ppo.temperature = 1.0
    cfg.policy_update.ppo.eval_every = 0
    train = [{"messages": [{"role": "user", "content": p}], "safety": False} for p in PROMPTS]
    out = ppo_on_ranks(cfg, tiny_llama, reward_models, train, [], tmp_path / "out")
    assert out["rollouts"]["engine"] == "vllm"
    assert out["rollouts"]["reloads"] == 2  # before steps 2 and 3, on rank 0's engine
    assert len(out["ranks"]) == 2 and len(out["steps"]) == 3
    start = load_file(f"{tiny_llama}/model.safetensors")
    trained = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert max((trained[k] - start[k]).abs().max().item() for k in start) > 1e-4


@pytest.mark.slow
def test_ppo_with_one_vllm_engine_per_node_matches_one_rank(tiny_llama, reward_models,
                                                            tmp_path):
    """rollout_engines per_node: the node's first rank hosts the engine and samples both ranks'
    prompts in one batch, as the one-rank run samples them all: greedy answers, and so the
    steps and the saved weights, are those of one rank with its own engine."""
    pytest.importorskip("vllm")
    runs = {}
    for ranks in (1, 2):
        cfg = _config(tiny_llama, ranks)
        cfg.sampling.backend = "vllm"
        cfg.sampling.max_model_len = 256
        cfg.sampling.dtype = "float32"
        cfg.policy_update.ppo.rollout_engines = "per_node"
        cfg.policy_update.ppo.eval_every = 0
        train = [{"messages": [{"role": "user", "content": p}], "safety": False}
                 for p in PROMPTS]
        runs[ranks] = ppo_on_ranks(cfg, tiny_llama, reward_models, train, [],
                                   tmp_path / str(ranks))
    assert runs[2]["rollouts"]["reloads"] == 2
    for a, b in zip(runs[1]["steps"], runs[2]["steps"]):
        for key in ("reward", "kl", "response_length", "policy_loss", "value_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    a = load_file(str(tmp_path / "1" / "model.safetensors"))
    b = load_file(str(tmp_path / "2" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def _shard_and_gather(rank: int, path: str, port: int, out) -> None:
    import os

    from flywheel.distributed.frozen import ShardedFrozen
    from flywheel.distributed.ranks import World

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same head on both ranks, as when both load one saved model
    model = RewardModel.from_backbone(path)
    whole = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    want = {k: v.clone() for k, v in model.state_dict().items()}
    sharded = ShardedFrozen(model, World(rank, 2))
    empty = all(p.numel() == 0 for p in model.parameters())
    with sharded.whole() as m:
        same = all(torch.equal(m.state_dict()[k], v) for k, v in want.items())
    out.put((rank, sharded.shard_bytes() / whole, empty, same))
    torch.distributed.destroy_process_group()


def test_a_sharded_frozen_model_holds_half_and_gathers_whole(tiny_llama):
    """Two processes (gloo): each keeps half of the reward model's bytes (to the padding of the
    last shard; a tied head is one tensor, counted once), its module tensors empty, and
    `whole()` gives back every weight exactly."""
    import multiprocessing

    from flywheel.distributed.launch import _free_endpoint

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = int(_free_endpoint().rsplit(":", 1)[1])
    procs = [ctx.Process(target=_shard_and_gather, args=(r, tiny_llama, port, out))
             for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, share, empty, same in got:
        assert share == pytest.approx(0.5, abs=0.01), (rank, share)
        assert empty and same, rank
