"""`flywheel plan-resources` for Llama-2-7B and Llama-2-70B (configs built from the published
shapes, no weights), each training stage at 1 node x 8 GPUs, 2 x 8 and 8 x 8, next to what the
literature reports needing.

    .venv/bin/python benchmarks/bench_plan_resources.py

Writes benchmarks/results/plan_resources.md. Arithmetic only (flywheel/distributed/memory.py):
no GPU runs, so nothing here is a measurement of a 7B or 70B run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from transformers import LlamaConfig

from flywheel.config import FlywheelConfig
from flywheel.distributed.memory import GB, STAGES, Training, model_states, plan_stage

OUT = Path(__file__).parent / "results" / "plan_resources.md"
CARD = 80 * GB
SHAPES = {  # Touvron et al. 2023 (Llama 2), the released checkpoints' config.json
    "Llama-2-7B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       intermediate_size=11008, vocab_size=32000),
    "Llama-2-70B": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, intermediate_size=28672, vocab_size=32000),
}
# the settings planned: one 1024-token sequence (a pair for the reward model) per micro-batch,
# Llama 2's PPO minibatch of 64, bf16 mixed precision (infra/deepspeed/zero3.json's), each stage
# at the highest ZeRO stage it accepts; vLLM engines left out (backend transformers)
SETTINGS = {
    "sampling": {"backend": "transformers", "max_model_len": 1024},
    "reward_model": {"deepspeed": "zero3", "batch_size": 64, "micro_batch_size": 1,
                     "max_length": 1024},
    "rejection_sampling": {"deepspeed": "zero3", "batch_size": 64, "micro_batch_size": 1,
                           "max_length": 1024, "k": 4},
    "policy_update": {"rrhf": {"deepspeed": "zero3", "max_length": 1024},
                      "ppo": {"deepspeed": "zero3", "minibatch": 64, "prompts_per_step": 512,
                              "frozen": "sharded"}},
}
ZERO = {"reward_model": 3, "rejection_sampling": 3, "rrhf": 3, "ppo": 2}
RANKS = {8: "1 x 8", 16: "2 x 8", 64: "8 x 8"}


def rows(name: str, cfg: FlywheelConfig) -> list[str]:
    out = []
    for stage in STAGES:
        # ZeRO-0 holds everything on every rank: one row says it for any number of ranks
        for zero, n in [(0, 8)] + [(ZERO[stage], n) for n in RANKS]:
            p = plan_stage(cfg, stage, n, zero)
            cells = [f"{v / GB:.1f}" for v in (p.weights, p.gradients, p.optimizer,
                                               p.activations, p.total)]
            out.append(f"| {name} | {stage} | {zero} | {RANKS[n]} | {p.sequences} | "
                       + " | ".join(cells) + f" | {'yes' if p.fits(CARD) else 'no'} |")
    return out


def main() -> None:
    lines = [
        "# Memory per GPU of each training stage, Llama 2 7B and 70B (`bench_plan_resources.py`)",
        "",
        "`flywheel plan-resources`'s arithmetic (flywheel/distributed/memory.py) on configs "
        "built from Llama 2's published shapes; no weights, no GPU: these are plans, not "
        "measurements. GB = 10^9 bytes, per GPU; fits: under 90 % of an 80 GB card. bf16 mixed "
        "precision (16 bytes per trained parameter), activation checkpointing off, one "
        "1024-token sequence per micro-batch (a pair: two; RRHF: a prompt's K = 4 responses; "
        "PPO: its minibatch of 64 rollouts split over the ranks), vLLM engines not counted "
        "(each takes `sampling.gpu_memory_utilization` of rank 0's card on top). ZeRO: 0 and "
        "the highest stage each stage accepts (PPO refuses 3). PPO's frozen reference and "
        "reward models in fp32 (flywheel/policy/ppo_job.py), sharded over the ranks "
        "(`frozen: sharded`) with the largest gathered whole while it scores.",
        "",
        "| model | stage | ZeRO | nodes x GPUs | seqs/micro | params | grads | optimizer | "
        "activations | total | fits 80 GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            folder = Path(tmp) / name
            LlamaConfig(**shape).save_pretrained(folder)
            cfg = FlywheelConfig.model_validate({
                **SETTINGS, "models": {"policy": str(folder), "reward_backbone": str(folder)}})
            lines += rows(name, cfg)
    mixed = Training(mixed=True)
    zero_paper = (sum(model_states(7.5e9, mixed, 1)) / GB,
                  sum(model_states(7.5e9, mixed.at_zero(3), 64)) / GB)
    ds13 = sum(model_states(13.2e9, mixed.at_zero(3), 8)) / GB
    ds66 = (sum(model_states(66e9, mixed.at_zero(3), 64)) / GB,
            sum(model_states(66e9, mixed.at_zero(3), 8)) / GB)
    lines += [
        "",
        "## Next to the literature",
        "",
        "| source | what it reports | this plan's arithmetic |",
        "|---|---|---|",
        "| ZeRO (Rajbhandari et al. 2019), figure 1 | mixed-precision Adam: 2 + 2 + 12 = 16 "
        "bytes per parameter; a 7.5B model needs 120 GB per GPU without ZeRO, about 1.9 GB "
        "with ZeRO-3 (P_os+g+p) over 64 GPUs | "
        f"{zero_paper[0]:.0f} GB; {zero_paper[1]:.3f} GB |",
        "| DeepSpeed-Chat blog (microsoft/DeepSpeed blogs/deepspeed-chat/README.md), table 4 | "
        "step 3 (PPO) of an OPT-13B actor with an OPT-350M reward model on one node of 8 "
        "A100-40G, 10.8 h | the 13.2B actor's model states under ZeRO-3 over 8: "
        f"{ds13:.1f} GB per GPU, under 40 GB before activations and the frozen copies |",
        "| DeepSpeed-Chat blog, table 5 | step 3 of OPT-66B on 8 nodes of 8 A100-80G, 7.5 h | "
        f"66B model states under ZeRO-3: {ds66[0]:.1f} GB per GPU over 64, {ds66[1]:.0f} GB "
        "over 8 (one node cannot hold them without offload) |",
        "| Llama 2 (Touvron et al. 2023), section 3.2.3 | PPO: batch 512, minibatch 64, "
        "one gradient step per minibatch (PPOConfig's docstring) | the rows above plan PPO's "
        "minibatch of 64 |",
        "",
        "What the plan says about this code. 7B: the reward model, rejection sampling and "
        "RRHF fit one node of 8 at ZeRO-3 (26.3, 20.7 and 39.9 GB per GPU); PPO fits 8 nodes "
        "of 8 (64.0 GB) with its frozen models sharded, not one (136.6 GB): actor and critic "
        "stay whole on every rank at ZeRO-2 (PPO samples from and syncs whole weights), and "
        "the reference gathered whole in fp32 to score is 27 GB. 70B: rejection sampling "
        "fits 8 nodes at ZeRO-3 (53.5 GB); the reward model does not (206.0 GB on one node, "
        "65 GB of it one pair's activations at 1024 tokens with no activation checkpointing, "
        "which the training loops do not turn on), nor RRHF (a prompt's 4 responses of "
        "activations alone are 131 GB) or PPO (its whole actor and critic). 70B needs "
        "activation checkpointing, and PPO ZeRO-3 for actor and critic with rollouts from "
        "gathered weights. Llama 2's own memory set-up for reward models and PPO could not be "
        "checked against the paper's text here, so it is left out.",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
