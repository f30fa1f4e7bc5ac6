"""The memory plan (flywheel/distributed/memory.py, `flywheel plan-resources`): parameter counts
by hand and against the real models, per-rank bytes under ZeRO 0/2/3 by hand, activations
against the tensors autograd saves, optimizer bytes against a 2-rank ZeRO-3 run, and the
command's table."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_reward_model import PAIRS
from transformers import AutoModelForCausalLM, LlamaConfig

from flywheel.config import FlywheelConfig, RewardModelConfig
from flywheel.distributed.memory import (
    GB,
    StagePlan,
    Training,
    activation_bytes,
    model_states,
    param_count,
    plan_stage,
    shape_of,
    training_of,
)
from flywheel.flows.cli import main

# Llama 2's published shapes (Touvron et al. 2023, table 1; the checkpoints' config.json)
LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False)
LLAMA2_70B = dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                  num_key_value_heads=8, intermediate_size=28672, vocab_size=32000,
                  tie_word_embeddings=False)
P7B = 6_738_415_616


def test_tiny_llama_param_count_matches_the_real_models(tiny_llama):
    """conftest's tiny Llama: h 128, I 256, 2 layers, 2 heads of 64 (no GQA), tied head.
    Per layer: attention 4 x 128^2 = 65,536, MLP 3 x 128 x 256 = 98,304, norms 256: 164,096;
    two layers 328,192, final norm 128, embeddings 128 V: 128 V + 328,320 as a causal LM; a
    reward model or critic adds Linear(128, 1) with its bias: + 129."""
    from flywheel.policy.ppo import ValueModel
    from flywheel.reward.model import RewardModel

    lm = AutoModelForCausalLM.from_pretrained(tiny_llama)
    vocab = lm.config.vocab_size
    assert param_count(tiny_llama, "lm") == 128 * vocab + 328_320
    assert param_count(tiny_llama, "lm") == sum(p.numel() for p in lm.parameters())
    for model in (RewardModel.from_backbone(tiny_llama), ValueModel.from_causal_lm(lm)):
        assert param_count(tiny_llama, "scalar") == 128 * vocab + 328_320 + 129
        assert param_count(tiny_llama, "scalar") == sum(p.numel() for p in model.parameters())


def test_llama2_param_counts_from_the_published_shapes():
    """7B: embeddings and untied head 2 x 32000 x 4096 = 262,144,000; per layer attention
    4 x 4096^2 = 67,108,864, MLP 3 x 4096 x 11008 = 135,266,304, norms 8,192: 202,383,360, x 32
    = 6,476,267,520; final norm 4,096: 6,738,415,616 (6.74e9).
    70B (GQA, 8 KV heads of 128): q and o 2 x 8192^2 = 134,217,728, k and v 2 x 8192 x 1024 =
    16,777,216, MLP 3 x 8192 x 28672 = 704,643,072, norms 16,384: 855,654,400 per layer, x 80 =
    68,452,352,000; embeddings and head 2 x 32000 x 8192 = 524,288,000; final norm 8,192:
    68,976,648,192 (68.98e9). A reward model drops the head and adds h + 1."""
    assert param_count(LlamaConfig(**LLAMA2_7B)) == P7B
    assert param_count(LlamaConfig(**LLAMA2_70B)) == 68_976_648_192
    assert param_count(LlamaConfig(**LLAMA2_7B), "scalar") == P7B - 131_072_000 + 4097
    with torch.device("meta"):  # the closed form agrees with transformers' own modules
        assert sum(p.numel() for p in AutoModelForCausalLM.from_config(
            LlamaConfig(**LLAMA2_70B)).parameters()) == 68_976_648_192


def test_per_rank_bytes_under_zero_0_2_3():
    """7B, bf16 mixed precision, 8 ranks. ZeRO-0: 2P weights + 2P grads + 12P optimizer = 16P =
    107.8 GB on every rank. ZeRO-2: 2P + 2P/8 + 12P/8 = 3.75P = 25.3 GB. ZeRO-3: 16P/8 = 2P =
    13.5 GB. fp32: 4P + 4P + 8P (no master copy) = 16P too. The ZeRO paper's 7.5B model:
    16 x 7.5e9 = 120 GB without ZeRO, 120/64 = 1.875 GB per GPU with ZeRO-3 on 64."""
    mixed = Training(mixed=True)
    assert sum(model_states(P7B, mixed, 8)) == 16 * P7B
    assert sum(model_states(P7B, mixed.at_zero(2), 8)) == pytest.approx(3.75 * P7B)
    assert model_states(P7B, mixed.at_zero(3), 8) == (P7B / 4, P7B / 4, 1.5 * P7B, 0.0)
    assert model_states(P7B, Training(), 1) == (4 * P7B, 4 * P7B, 8 * P7B, 0.0)
    assert sum(model_states(7.5e9, mixed, 1)) / GB == 120
    assert sum(model_states(7.5e9, mixed.at_zero(3), 64)) / GB == 1.875
    # zero3-offload: optimizer state and weight shards in CPU memory, gradient shard on the GPU
    off = training_of("zero3-offload")
    assert (off.zero, off.mixed, off.offload_optimizer, off.offload_params) == (3, True, True, True)
    assert model_states(P7B, off, 8) == (0.0, P7B / 4, 0.0, 1.5 * P7B + P7B / 4)
    assert training_of(None) == Training()  # plain PyTorch: fp32, everything on every rank
    assert (training_of("zero2-cpu").zero, training_of("zero2-cpu").mixed) == (2, False)
    assert (training_of("zero3").zero, training_of("zero3").mixed) == (3, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activations_match_what_autograd_saves(tiny_llama, dtype):
    """The tensors the tiny Llama's forward saves for its backward (distinct storages, the
    weights left out), 2 sequences of 96 tokens, against the formula: bf16 per token 2 layers x
    (20 x 128 + 4 x 128 + 8 x 256 = 5,120) + 6 x 128 = 11,008 bytes; fp32 2 x (32 x 128 +
    8 x 128 + 16 x 256 = 9,216) + 8 x 128 = 19,456. What the formula leaves out (token ids,
    RoPE tables, the norms' 1/rms, the kernel's log-sum-exp) is under 3 %."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_llama, dtype=dtype).train()
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(3, model.config.vocab_size, (2, 96),
                        generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(n for ptr, n in saved.items() if ptr not in weights)
    planned = activation_bytes(shape_of(tiny_llama), 2, 96, dtype == torch.bfloat16)
    assert planned == 2 * 96 * (11_008 if dtype == torch.bfloat16 else 19_456)
    assert planned <= measured <= 1.03 * planned


@pytest.mark.filterwarnings("ignore:`torch.distributed.\\w+` is deprecated:FutureWarning")
def test_planned_optimizer_bytes_match_a_zero3_run_on_two_ranks(tiny_llama, tmp_path):
    """A reward model on the tiny Llama, infra/deepspeed/zero3.json in fp32: the plan counts
    AdamW's moments m and v, 8 bytes per parameter, (128 V + 328,449) x 8 / 2 per rank; the
    measurement (`Stepper.optimizer_state_bytes`) sums the tensors in the torch optimizer's
    state, exp_avg and exp_avg_sq, the same two. One rank in this process (plain PyTorch:
    everything on the rank), two under torchrun (one launch): each rank's measured bytes are
    half of one rank's and the plan's to 2 % (DeepSpeed pads each rank's partition)."""
    from flywheel.reward.train import fit_reward_model, train_reward_model
    from flywheel.training import DEEPSPEED_CONFIGS

    config = json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())
    config["bf16"]["enabled"] = False
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3-fp32.json").write_text(json.dumps(config))
    rm = dict(batch_size=4, micro_batch_size=1, learning_rate=1e-3, max_length=64, seed=3)
    pairs = (PAIRS * 3)[:9]
    one_cfg = FlywheelConfig(models={"reward_backbone": tiny_llama},
                             reward_model=RewardModelConfig(**rm, resources={"ranks_per_node": 1}))
    two_cfg = FlywheelConfig(models={"reward_backbone": tiny_llama},
                             reward_model=RewardModelConfig(
                                 **rm, resources={"ranks_per_node": 2},
                                 deepspeed=str(tmp_path / "zero3-fp32.json")))
    one, two = plan_stage(one_cfg, "reward_model"), plan_stage(two_cfg, "reward_model")
    n = param_count(tiny_llama, "scalar")
    assert (one.ranks, one.training.zero, two.ranks, two.training.zero) == (1, 0, 2, 3)
    assert (one.optimizer, two.optimizer) == (8 * n, 4 * n)
    assert two.total < one.total

    _, whole = train_reward_model(tiny_llama, pairs, one_cfg.reward_model)
    _, got = fit_reward_model(tiny_llama, pairs, two_cfg.reward_model)
    assert whole["optimizer_state_bytes"] == one.optimizer
    for rank in got["ranks"]:
        assert rank["optimizer_state_bytes"] == pytest.approx(two.optimizer, rel=0.02)


def test_ppo_holds_five_models_and_refuses_zero3(tmp_path):
    """7B PPO in plain PyTorch on 1 rank: actor 16P and critic 16 P_rm trained (fp32: 4 + 4 + 8),
    reference 4P and two reward models 4 P_rm each frozen in fp32: weights 4 (2P + 3 P_rm)."""
    folder = tmp_path / "llama2-7b"
    LlamaConfig(**LLAMA2_7B).save_pretrained(folder)
    cfg = FlywheelConfig(models={"policy": str(folder), "reward_backbone": str(folder)})
    p = plan_stage(cfg, "ppo", ranks=1)
    p_rm = param_count(str(folder), "scalar")
    assert [m.role for m in p.models if m.trained] == ["actor", "critic"]
    assert p.weights == 4 * (2 * P7B + 3 * p_rm)
    assert p.optimizer == 8 * (P7B + p_rm)
    assert p.refused is None and plan_stage(cfg, "ppo", zero=3).refused
    assert not plan_stage(cfg, "ppo", zero=3, ranks=64).fits(1e15)  # refused fits nowhere


def test_sharded_frozen_models_hold_a_share_and_one_whole(tmp_path):
    """7B PPO on 8 ranks, plain PyTorch: replicated, the frozen weights per rank are
    4 (P + 2 P_rm); sharded, 4 (P + 2 P_rm) / 8 at rest plus the largest, the reference
    (4 P, its untied head makes it larger than a reward model), gathered whole to score."""
    folder = tmp_path / "llama2-7b"
    LlamaConfig(**LLAMA2_7B).save_pretrained(folder)
    p_rm = param_count(str(folder), "scalar")

    def frozen_weights(mode):
        cfg = FlywheelConfig(models={"policy": str(folder), "reward_backbone": str(folder)},
                             policy_update={"ppo": {"frozen": mode}})
        return sum(m.weights for m in plan_stage(cfg, "ppo", ranks=8).models if not m.trained)

    assert frozen_weights("replicated") == 4 * (P7B + 2 * p_rm)
    assert frozen_weights("sharded") == pytest.approx(4 * (P7B + 2 * p_rm) / 8 + 4 * P7B)


def test_fits_keeps_the_headroom_free():
    """A card of 80 GB fits 72 GB (10 % kept free), not 72.1 GB; a vLLM engine at 0.3 of the
    card takes 24 GB of rank 0's."""
    def plan(total_gb: float, share: float = 0.0) -> StagePlan:
        from flywheel.distributed.memory import ModelMemory

        m = ModelMemory("policy", "x", 1, True, total_gb * GB, 0.0, 0.0, 0.0, 0.0)
        return StagePlan("rejection_sampling", Training(), 1, 1, 1, (m,), share)

    assert plan(72).fits(80 * GB) and not plan(72.1).fits(80 * GB)
    assert plan(48).fits(80 * GB) and not plan(48.1, 0.3).fits(80 * GB)


def _write_7b_config(tmp_path) -> str:
    folder = tmp_path / "llama2-7b"  # config.json only: the plan reads no weights
    LlamaConfig(**LLAMA2_7B).save_pretrained(folder)
    cfg = {"models": {"policy": str(folder), "reward_backbone": str(folder)},
           "sampling": {"backend": "transformers"},
           "rejection_sampling": {"deepspeed": "zero3", "batch_size": 8, "micro_batch_size": 4}}
    path = tmp_path / "flywheel.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _row(out: str, stage_title: str, mark: str) -> list[str]:
    section = out.split(stage_title)[1].split("\n\n")[0]
    return next(line.split() for line in section.splitlines() if line.split()[:1] == [mark])


def test_plan_resources_command_on_llama2_7b(tmp_path, capsys):
    """Rejection sampling of a 7B policy, infra/deepspeed/zero3.json (bf16), 80 GB cards.
    1 rank, --zero 0: weights 2P = 13.5 GB, grads 13.5, optimizer 12P = 80.9: 108 GB of model
    states alone (and 4 sequences of activations, 12.8 GB): does not fit. 8 ranks at ZeRO-3:
    weights 2P/8 = 1.68 GB plus two gathered layers of 202.4e6 params in bf16 (0.81 GB) = 2.5,
    grads 1.7, optimizer 10.1; activations of one sequence (batch 8 over 8 ranks) of 512
    tokens, (32 x (24 x 4096 + 8 x 11008) + 6 x 4096 + 8 x 32000) x 512 = 3.2 GB; total 17.5:
    fits."""
    config = _write_7b_config(tmp_path)
    assert main(["plan-resources", "--config", config, "--ranks", "1", "--zero", "0"]) == 0
    row = _row(capsys.readouterr().out, "rejection sampling", "0*")
    assert row[1:6] == ["1", "13.5", "13.5", "80.9", "12.8"]
    assert row[-3:] == ["does", "not", "fit"]

    assert main(["plan-resources", "--config", config, "--ranks", "8"]) == 0
    row = _row(capsys.readouterr().out, "rejection sampling", "3*")
    assert row[1:8] == ["8", "2.5", "1.7", "10.1", "3.2", "0.0", "17.5"] and row[-1] == "fits"

    assert main(["plan-resources", "--config", config, "--ranks", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rs = next(s for s in out["stages"] if s["stage"] == "rejection_sampling")
    (plan,) = rs["configured"]
    assert plan["optimizer"] == 12 * P7B / 8 and plan["fits"] is True
    zero0 = next(p for p in rs["grid"] if p["training"]["zero"] == 0 and p["ranks"] == 1)
    assert zero0["weights"] + zero0["gradients"] + zero0["optimizer"] == 16 * P7B
    assert zero0["fits"] is False
