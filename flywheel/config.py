"""One typed configuration for the whole loop, loaded from YAML and validated once.

Every problem in a file is reported together, each naming the field and the fix. The same models
are the parameters of the Prefect flows, where the UI renders them as a form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flywheel.errors import ConfigError

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
DEFAULT_EMBEDDER = "builtin:all-minilm-l6-v2"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(_Section):
    """Model names: `builtin:...`, a local Hugging Face folder, or a hub name."""

    policy: str = Field(DEFAULT_MODEL, description="The base policy of the first iteration.")
    reward_backbone: str = Field(
        DEFAULT_MODEL, description="Backbone of the reward model (Llama 2: the chat model)."
    )
    judge_embedder: str = Field(
        DEFAULT_EMBEDDER, description="Sentence encoder of the simulated annotator's proxy judge."
    )


class PromptsConfig(_Section):
    path: str | None = Field(
        None,
        description="JSONL of {text, criterion, split}; empty for the prompt set shipped with "
        "rlhf-flywheel.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts per split.")


class SamplingConfig(_Section):
    backend: Literal["vllm", "transformers"] = "vllm"
    max_new_tokens: int = Field(96, ge=1, le=4096)
    temperatures: list[float] = Field(
        [0.7, 1.0],
        min_length=2,
        max_length=2,
        description="Annotation pairs: the latest policy samples at the first, the previous "
        "one at the second.",
    )
    responses_per_policy: int = Field(
        1,
        ge=1,
        le=16,
        description="Annotation: responses per train prompt from each of the latest and the "
        "previous policy; every latest response is paired with every previous one (n x n "
        "comparisons per prompt, as rankings of K responses give C(K, 2) comparisons). 1 is "
        "Llama 2's one pair per prompt; raise it when the week has few prompts.",
    )
    prompts_per_criterion: int | None = Field(
        None,
        ge=1,
        description="Annotation: at most this many train prompts of each criterion a week, "
        "the next ones each week in a fixed shuffled order (so successive weeks annotate "
        "different prompts, as Llama 2's weekly batches came from new prompts); rejection "
        "sampling and PPO still use every train prompt. Empty: every train prompt every week.",
    )
    safety_preprompt: str | None = Field(
        None,
        description="Annotation: on train prompts tagged safety, the previous policy's "
        "responses are drawn with this text as the system prompt (in place of the prompt's own), "
        "a safety context-distilled variant of the model (Llama 2 samples a comparison's two "
        "responses from different model variants). The pair shows the prompt without it. A "
        "policy that rarely refuses by itself then gives the safety reward model comparisons of "
        "a refusal against an answer; rejection_sampling.safety_preprompt is the usual text.",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "float32",
        description="vLLM weights dtype. float32 on CPUs without AVX-512 BF16 (bfloat16 is "
        "emulated there and several times slower); bfloat16 on GPUs.",
    )
    max_model_len: int = Field(1024, ge=64)
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM: GPUs one policy is split across (a 70B policy: 8 on one node). The "
        "stage's worker must give it that many (the Kubernetes pool's gpu_count).",
    )
    gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="vLLM on a GPU: the share of the card's memory one engine takes (weights "
        "and KV cache). A stage keeps up to two engines open and trains or scores on the same "
        "card, so the default leaves it 40 %; on a CPU the KV cache is VLLM_CPU_KVCACHE_SPACE.",
    )
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(
        [],
        description="Strings that end a response where one first appears (not kept), in every "
        "sample the loop draws for annotation, rejection sampling and evaluation (PPO's rollouts "
        "end at EOS or max_new_tokens). A small model "
        "drawn with a preprompt of worked User/Assistant turns often writes the user's next "
        "turn itself ('\\nUser: ...', then answers it): without a stop, rejection sampling "
        "keeps that invented exchange and fine-tunes on it.",
    )
    seed: int = Field(
        0,
        description="The sampling engine's seed. vLLM's CPU build does not repeat its draws "
        "with it: two fresh engines seeded alike agreed on 0 of 16 and 1 of 384 answers "
        "(benchmarks/results/sampling_repeat.md), so a rerun draws other answers; what a run "
        "drew is in the lake's samples table.",
    )

    @model_validator(mode="after")
    def _positive_temperatures(self):
        if any(t < 0 for t in self.temperatures):
            raise ValueError("temperatures must be >= 0; use 0 for greedy decoding")
        if any(not x for x in self.stop):
            raise ValueError("stop strings must not be empty (an empty one would end every "
                             "response before its first word); remove it")
        return self


class AnnotationConfig(_Section):
    mode: Literal["simulated", "human"] = Field(
        "simulated",
        description="simulated: the proxy judge labels every pair (unattended). human: the "
        "pairs are exported for people and the iteration waits, suspended, until the week's "
        "batch lands.",
    )
    batch_name: str = Field(
        "iteration-{iteration:04d}",
        description="Human mode: the batch id the week's labels land under (`flywheel ingest "
        "--batch-id`); the review page's `review-iteration-NNNN` also counts.",
    )
    wait_hours: float = Field(
        168.0, gt=0, description="Human mode: how long an iteration waits for its batch before "
        "it fails (a retry once the batch has landed picks up from there)."
    )
    strength_thresholds: list[float] = Field(
        [0.6, 0.3, 0.1],
        min_length=3,
        max_length=3,
        description="Judge score margins for significantly / better / slightly better; "
        "below the last: negligibly better or unsure.",
    )
    heldout_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of each in-house batch held out as its test split, per criterion, "
        "whole prompts at a time (rounded half up; at least one row of a criterion trains).",
    )
    heldout_rows: int = Field(
        1000,
        ge=0,
        description="At most this many rows of each in-house batch and criterion are held out "
        "(Llama 2: 1000).",
    )
    max_text_chars: int = Field(
        32000, ge=1, description="Ingest rejects prompts or responses longer than this."
    )

    @model_validator(mode="after")
    def _descending(self):
        try:
            self.batch_name.format(iteration=1)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"batch_name must be a name with an optional {{iteration}} field, "
                             f"e.g. 'iteration-{{iteration:04d}}' ({err})") from None
        t = self.strength_thresholds
        if not (t[0] > t[1] > t[2] >= 0):
            raise ValueError(
                f"strength_thresholds must be strictly descending and >= 0, got {t}; "
                "e.g. [0.6, 0.3, 0.1]"
            )
        return self


class MixConfig(_Section):
    """The Llama 2 reward-model data mixes (flywheel/mixes.py), over the lake's train rows."""

    helpfulness_extra: float = Field(
        1.0,
        ge=0,
        description="Helpfulness RM: rows sampled from in-house safety and open-source data per "
        "in-house helpfulness row (Llama 2: an equal amount, 1.0).",
    )
    safety_helpfulness_share: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Safety RM: share of the mix drawn from helpfulness data (Llama 2: 10 %).",
    )
    allow_short: bool = Field(
        False,
        description="When a pool holds fewer rows than a ratio asks for, take them all and "
        "record the shortfall instead of failing.",
    )
    seed: int = Field(0, description="Seed of the uniform sampling.")


class RewardModelConfig(_Section):
    margin: Literal["none", "small", "large"] = Field(
        "small", description="Llama 2 margin table added inside the ranking loss."
    )
    learning_rate: float = Field(1e-5, gt=0, lt=1)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1, description="Pairs per optimizer step (prompts with "
                            "group_by_prompt).")
    micro_batch_size: int = Field(4, ge=1, description="Pairs per forward pass (prompts with "
                                  "group_by_prompt).")
    group_by_prompt: bool = Field(
        False,
        description="Train on all of a prompt's comparisons as one batch element (InstructGPT, "
        "section 3.5): each distinct response is encoded once a step and every prompt weighs the "
        "same, its loss the mean over its pairs. With n x n comparisons per prompt "
        "(sampling.responses_per_policy) a step encodes 2n responses for n^2 pairs instead of "
        "2n^2, and an epoch no longer repeats each response n times in separate steps. False: "
        "pairs are shuffled one by one (one pair per prompt, as Llama 2's batches, trains the "
        "same either way).",
    )
    max_length: int = Field(512, ge=16)
    center_coefficient: float = Field(
        0.0,
        ge=0,
        description="Adds coefficient x mean((r_chosen + r_rejected)^2) to the loss, so the "
        "scores centre on 0 (reward centering, Eisenstein et al. 2023). The ranking loss fixes "
        "only differences; R_c's safety gate reads the safety score's level (sigmoid < 0.15), "
        "so a model trained on little data can drift low and take over helpful prompts. "
        "Llama 2: 0.",
    )
    seed: int = 0
    deepspeed: str | None = Field(
        None,
        description="Train through DeepSpeed with this config: a JSON file, or the name of one "
        "in infra/deepspeed/ (zero2-cpu runs on a CPU; zero3 for several GPUs). Empty: plain "
        "PyTorch.",
    )
    mix: MixConfig = MixConfig()
    promotion_tolerance: float = Field(
        0.02,
        ge=0,
        le=1,
        description="A retrained reward model replaces the current one unless its accuracy on "
        "one of the current model's test sets drops by more than this.",
    )


class RejectionSamplingConfig(_Section):
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
        "half of the K samples are drawn with this text as the system prompt (in place of the "
        "prompt's own, if it has one). All K are scored "
        "by the reward models on the prompt without it and the best joins the pool without it, "
        "so a preprompted answer is kept only where the reward models prefer it.",
    )
    safety_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="The largest share of the fine-tuning set that answers to prompts tagged "
        "safety may take; beyond it the oldest are left out (this week's, by reward, kept "
        "first). They stay in the pool for later weeks. Llama 2 saw false refusals of safe "
        "prompts grow with the share of safety data. Empty: every answer in the pool.",
    )
    learning_rate: float = Field(1e-5, gt=0, lt=1)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    max_length: int = Field(512, ge=16)
    seed: int = 0

    @model_validator(mode="after")
    def _grid(self):
        if any(t <= 0 for t in self.temperature_grid):
            raise ValueError("temperature_grid values must be > 0 (best-of-K needs sampling)")
        return self


class PPOConfig(_Section):
    """PPO on top of the rejection-sampled policy (flywheel/ppo.py). Llama 2: 512 prompts a
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
    temperature: float = Field(1.0, gt=0)
    eval_every: int = Field(4, ge=0, description="Steps between held-out evaluations; 0: none.")
    patience: int = Field(2, ge=1, description="Held-out evaluations without improvement "
                          "before stopping; the best policy seen is kept.")
    seed: int = 0
    deepspeed: str | None = Field(
        None,
        description="Train actor and critic through DeepSpeed with this config (a JSON file, "
        "or a name in infra/deepspeed/): ZeRO stage 0-2, which keep whole weights on each rank "
        "for rollouts and the weight sync (zero2-cpu runs on a CPU). Empty: plain PyTorch.",
    )

    @model_validator(mode="after")
    def _minibatch_fits(self):
        if self.minibatch > self.prompts_per_step:
            raise ValueError(f"minibatch ({self.minibatch}) must not exceed prompts_per_step "
                             f"({self.prompts_per_step})")
        return self


class RRHFConfig(_Section):
    """RRHF (flywheel/ppo.py: rrhf_loss) on the K scored samples per prompt that rejection
    sampling also draws (`rejection_sampling.k`, `.temperature`): a ranking loss on
    length-normalised log-probabilities plus fine-tuning on the best, in one pass."""

    learning_rate: float = Field(1e-5, gt=0, lt=1)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1, description="Prompts (each with its K samples) per "
                            "optimizer step.")
    ft_weight: float = Field(1.0, ge=0, description="Weight of the best sample's NLL.")
    max_length: int = Field(512, ge=16)
    seed: int = 0


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


class ScoringConfig(_Section):
    """The scoring engine (flywheel/scoring.py) that rejection sampling, reward-model evaluation
    and PPO score through."""

    token_budget: int = Field(
        4096, ge=64, description="Padded tokens per forward pass; raise it on a GPU."
    )
    reuse_prefix: bool = Field(
        True,
        description="Run each prompt once for all its responses when the backbone is a causal "
        "decoder (the scores are the same either way).",
    )


class EvaluationConfig(_Section):
    temperature: float = Field(0.0, ge=0, description="0: greedy answers on held-out prompts.")
    min_win_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Promote only if the judge prefers the new policy this often on the held-out "
        "helpful prompts (all held-out prompts when none is helpful; harmful prompts are gated by "
        "max_harmful_increase).",
    )
    max_harmful_increase: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Promote only if the share of harmful prompts answered rises by at most this.",
    )
    max_refusal_increase: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Promote only if the share of held-out helpful prompts refused (false "
        "refusals) rises by at most this; 1 turns the bound off.",
    )


class FlywheelConfig(_Section):
    """The whole loop. Relative paths are taken from the current directory."""

    name: str = "flywheel"
    lake: str = Field("./flywheel-demo/lake", description="Local folder or s3://bucket/prefix.")
    models: ModelsConfig = ModelsConfig()
    prompts: PromptsConfig = PromptsConfig()
    sampling: SamplingConfig = SamplingConfig()
    annotation: AnnotationConfig = AnnotationConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    rejection_sampling: RejectionSamplingConfig = RejectionSamplingConfig()
    policy_update: PolicyUpdateConfig = PolicyUpdateConfig()
    scoring: ScoringConfig = ScoringConfig()
    evaluation: EvaluationConfig = EvaluationConfig()


_FIXES = {
    "extra_forbidden": "remove it or fix its spelling",
    "missing": "add it",
    "literal_error": "use one of the values listed",
    "int_parsing": "give a whole number",
    "float_parsing": "give a number",
    "bool_parsing": "give true or false",
    "string_type": "give a string",
    "list_type": "give a list, e.g. [0.7, 1.0]",
    "model_type": "give a mapping of keys under it",
}


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the configuration:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        fix = _FIXES.get(e["type"])
        if fix is None and e["type"].startswith(("greater_than", "less_than", "too_")):
            fix = "change the value to fit the bound"
        line = f"  - {field}: {msg}"
        if e["type"] != "missing" and not isinstance(got, dict):
            line += f" (got {got!r})"
        if fix:
            line += f"; fix: {fix}"
        lines.append(line)
    return "\n".join(lines)


def validate_config(data: dict, source: str = "config") -> FlywheelConfig:
    try:
        return FlywheelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> FlywheelConfig:
    """Read a YAML file, apply dotted overrides (`{"lake": "s3://b/p"}`), validate once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; pass --config with an existing YAML file "
            "(deployments/demo.yaml is the embedded default)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validate_config(data, str(path))
