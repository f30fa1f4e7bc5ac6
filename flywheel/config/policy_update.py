"""The policy update's sections of the configuration: rejection sampling, PPO, RRHF and which
iterations run which."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from flywheel.config.resources import RESOURCES_HELP, ResourcesConfig
from flywheel.config.sections import PRECISION_HELP, SEED_HELP, _Section, _Seeded


class RejectionSamplingConfig(_Seeded):
    k: int = Field(4, ge=2, description="Samples per prompt; the best by reward is kept.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (the fallback when "
                               "temperature_grid is empty).")
    temperature_grid: list[float] = Field(
        [],
        description="Re-tune the temperature each iteration: the grid value whose K samples on "
        "the held-out prompts have the highest mean best-of-K reward R_c is used and recorded "
        "(Llama 2: the best temperature drifts up, to about 1.2-1.3, as the policy improves). "
        "Empty: always `temperature`.",
    )
    temperature_prompts: int | None = Field(
        None,
        ge=1,
        description="Tune the temperature on at most this many held-out prompts (the same ones "
        "each iteration, a fixed random draw): the search samples K per prompt at every grid "
        "value, which on a small machine costs more than the rejection sampling it tunes. "
        "Empty: every held-out prompt.",
    )
    teacher: str | None = Field(
        None,
        description="Distillation: draw the K samples from this (larger) model instead of the "
        "latest policy, and fine-tune the latest policy on the pool of its best.",
    )
    safety_preprompt: str | None = Field(
        None,
        description="Llama 2's targeted safety context distillation: on prompts tagged safety, "
        "safety_preprompt_k samples (half of K by default) are drawn with this text as the "
        "system prompt (in place of the prompt's own, if it has one). All are scored "
        "by the reward models on the prompt without it and the best joins the pool without it, "
        "so a preprompted answer is kept only where the reward models prefer it.",
    )
    safety_preprompt_k: int | None = Field(
        None,
        ge=1,
        description="How many of a safety-tagged prompt's draws are made with safety_preprompt, "
        "beside its K - K//2 plain ones: a refusal can be kept only where one was drawn, and "
        "a 135M policy refuses a fraction of its preprompted draws. Empty: K//2 (half of K).",
    )
    preprompt: str | None = Field(
        None,
        description="Context distillation of a behaviour, e.g. brevity: every draw the safety "
        "preprompt does not make is drawn with this text as the system prompt (in place of the "
        "prompt's own); scored by the reward models and fine-tuned on without it, so the policy "
        "learns to answer that way unprompted. Empty: drawn on the prompt as it is.",
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="The token limit of rejection sampling's draws (an answer that reaches it "
        "was cut off). Empty: sampling.max_new_tokens.",
    )
    prefer_ended: bool = Field(
        False,
        description="Keep per prompt not tagged safety the best of the answers that ended "
        "(within the token limit, or at a stop string), the best of all only where none did: "
        "an answer the token limit cut off teaches the policy to run on. On prompts tagged "
        "safety the best of all: a refusal that runs on is cut off more often than a harmful "
        "answer ends; with safety_refusals_only, the best of the refusals that ended. False: "
        "the best of all, as Llama 2 (whose limit answers rarely reach).",
    )
    avoid_refusals: bool = Field(
        False,
        description="On prompts not tagged safety, keep the best answer the refusal classifier "
        "(the evaluation's) does not read as a refusal, where one was drawn: a refusal picked "
        "on a helpful prompt teaches the policy false refusals. False: R_c alone decides.",
    )
    safety_refusals_only: bool = Field(
        False,
        description="On prompts tagged safety, keep the best draw the refusal classifier reads "
        "as a refusal, and none where no refusal was drawn: a compliant answer to a harmful "
        "request is not learned, however the safety model ranks it. False: R_c alone decides.",
    )
    safety_repeat: int = Field(
        1,
        ge=1,
        description="How many times an epoch each kept answer to a prompt tagged safety is "
        "fine-tuned on (safety_share counts it once): a few dozen refusals among a few hundred "
        "answers teach a small policy to refuse only the prompts it saw.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field("fp32", description=PRECISION_HELP)
    safety_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="The largest share of the fine-tuning set that answers to prompts tagged "
        "safety may take; beyond it the oldest are left out (this week's, by reward, kept "
        "first). They stay in the pool for later weeks. Llama 2 saw false refusals of safe "
        "prompts grow with the share of safety data. Empty: every answer in the pool.",
    )
    finetune_on: Literal["pool", "new"] = Field(
        "pool",
        description="What the latest policy is fine-tuned on: `pool`, the whole pool (every "
        "iteration's best, as Llama 2); `new`, the pool's answers that policy and its ancestors "
        "were not yet fine-tuned on (this week's best, and earlier weeks' when their policy was "
        "rolled back or the safety share cap left them out), so a week's fine-tuning costs "
        "what is new instead of growing with the pool.",
    )
    learning_rate: float = Field(1e-5, gt=0, lt=1)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    max_length: int = Field(512, ge=16)
    seed: int | None = Field(None, description="Seed of the fine-tuning's batch order and the "
                             "temperature search's draw of held-out prompts. " + SEED_HELP)
    deepspeed: str | None = Field(
        None,
        description="Fine-tune through DeepSpeed with this config (a JSON file, or a name in "
        "infra/deepspeed/: zero2-cpu, zero3, zero3-offload). Empty: plain PyTorch (with "
        "several ranks, gradients averaged across them).",
    )
    resources: ResourcesConfig = Field(ResourcesConfig(), description=RESOURCES_HELP)

    @model_validator(mode="after")
    def _grid(self):
        if any(t <= 0 for t in self.temperature_grid):
            raise ValueError("temperature_grid values must be > 0 (best-of-K needs sampling)")
        if self.safety_preprompt_k and not self.safety_preprompt:
            raise ValueError("safety_preprompt_k counts draws made with safety_preprompt: set "
                             "rejection_sampling.safety_preprompt too, or drop safety_preprompt_k")
        return self


class PPOConfig(_Seeded):
    """PPO on top of the rejection-sampled policy (flywheel/policy/ppo.py). Llama 2: 512 prompts a
    step, minibatch 64, constant lr 1e-6, beta 0.01 (7B, 13B) or 0.005 (34B, 70B), clip 0.2;
    the defaults are scaled down for small runs."""

    steps: int = Field(8, ge=1, description="Rollout-and-update steps (an upper bound: "
                       "held-out early stopping may end sooner).")
    prompts_per_step: int = Field(16, ge=1, description="Rollouts per step (Llama 2: 512).")
    minibatch: int = Field(8, ge=1, description="Rollouts per gradient step; one step per "
                           "minibatch (Llama 2: 64).")
    learning_rate: float = Field(1e-6, gt=0, lt=1, description="Constant actor lr (AdamW "
                                 "0.9/0.95, eps 1e-5, weight decay 0.1, grad clip 1.0).")
    critic_learning_rate: float = Field(1e-5, gt=0, lt=1)
    beta: float = Field(0.01, ge=0, description="KL penalty against the rejection-sampled "
                        "policy, per token.")
    clip: float = Field(0.2, gt=0, lt=1)
    value_clip: float = Field(0.2, gt=0, description="How far a value may move from the "
                              "rollout's in one update.")
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0, description="Rollout temperature; 0 decodes "
                               "greedily (a check that repeats exactly, not training: PPO "
                               "explores by sampling).")
    eval_every: int = Field(4, ge=0, description="Steps between held-out evaluations; 0: none.")
    patience: int = Field(2, ge=1, description="Held-out evaluations without improvement "
                          "before stopping; the best policy seen is kept.")
    seed: int | None = Field(None, description="Seed of PPO's torch generator, prompt "
                             "draws and rollout engine. " + SEED_HELP)
    deepspeed: str | None = Field(
        None,
        description="Train actor and critic through DeepSpeed with this config (a JSON file, "
        "or a name in infra/deepspeed/): ZeRO stage 0-2, which keep whole weights on each rank "
        "for rollouts and the weight sync (zero2-cpu runs on a CPU). Empty: plain PyTorch.",
    )
    resources: ResourcesConfig = Field(ResourcesConfig(), description=RESOURCES_HELP)
    frozen: Literal["replicated", "sharded"] = Field(
        "replicated",
        description="PPO's frozen models (the reference policy, both reward models) on several "
        "ranks: replicated, whole on every rank; sharded, 1/N of each on each of N ranks, a "
        "model gathered whole only while it scores (flywheel/distributed/frozen.py), so a rank "
        "holds one of them whole at a time instead of all three.",
    )
    rollout_engines: Literal["per_rank", "per_node"] = Field(
        "per_rank",
        description="With sampling.backend vllm on several ranks: per_rank, each rank samples "
        "its prompts from its own engine on its own GPU (data parallel); per_node, one engine "
        "per node on its first rank, across sampling.tensor_parallel_size of the node's GPUs, "
        "serves all the node's ranks (for a policy too large for one GPU's spare memory).",
    )

    @model_validator(mode="after")
    def _minibatch_fits(self):
        if self.minibatch > self.prompts_per_step:
            raise ValueError(f"minibatch ({self.minibatch}) must not exceed prompts_per_step "
                             f"({self.prompts_per_step})")
        return self


class RRHFConfig(_Seeded):
    """RRHF (flywheel/policy/rrhf.py: rrhf_loss) on the K scored samples per prompt that rejection
    sampling also draws (`rejection_sampling.k`, `.temperature`): a ranking loss on
    length-normalised log-probabilities plus fine-tuning on the best, in one pass."""

    learning_rate: float = Field(1e-5, gt=0, lt=1)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1, description="Prompts (each with its K samples) per "
                            "optimizer step.")
    ft_weight: float = Field(1.0, ge=0, description="Weight of the best sample's NLL.")
    max_length: int = Field(512, ge=16)
    seed: int | None = Field(None, description="Seed of the batch order. " + SEED_HELP)
    deepspeed: str | None = Field(
        None,
        description="Train through DeepSpeed with this config (a JSON file, or a name in "
        "infra/deepspeed/: zero2-cpu, zero3, zero3-offload). Empty: plain PyTorch (with "
        "several ranks, gradients averaged across them).",
    )
    resources: ResourcesConfig = Field(ResourcesConfig(), description=RESOURCES_HELP)

Method = Literal["rejection_sampling", "rrhf", "ppo"]


# what one iteration may run: one sampling-based update from the iteration's start policy,
# optionally PPO on top of it, or PPO alone
METHOD_SEQUENCES = (["rejection_sampling"], ["rrhf"], ["ppo"], ["rejection_sampling", "ppo"],
                    ["rrhf", "ppo"])


class PolicyUpdateConfig(_Section):
    """Which policy update runs in which iteration (Llama 2: rejection sampling alone for the
    first iterations, then rejection sampling followed by PPO)."""

    methods: list[Method] = Field(
        ["rejection_sampling"],
        description="The update of every iteration `schedule` does not name.",
    )
    schedule: dict[int, list[Method]] = Field(
        {},
        description="Iteration -> its update, e.g. {4: [rejection_sampling, ppo], "
        "5: [rrhf]}.",
    )
    ppo: PPOConfig = PPOConfig()
    rrhf: RRHFConfig = RRHFConfig()

    @model_validator(mode="after")
    def _known_sequences(self):
        allowed = " | ".join(str(m) for m in METHOD_SEQUENCES)
        for where, seq in [("methods", self.methods),
                           *[(f"schedule[{k}]", v) for k, v in self.schedule.items()]]:
            if list(seq) not in METHOD_SEQUENCES:
                raise ValueError(f"{where} = {list(seq)} is not a policy update; use one of "
                                 f"{allowed}")
        if any(k < 1 for k in self.schedule):
            raise ValueError("schedule keys are iterations, from 1")
        return self

    def for_iteration(self, iteration: int) -> list[str]:
        return list(self.schedule.get(iteration, self.methods))
