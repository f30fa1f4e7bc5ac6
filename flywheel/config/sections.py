"""The sections of the configuration: models, prompts, sampling, annotation, reward models,
scoring. Evaluation's is in evaluation.py, the policy update's in policy_update.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from flywheel.config.annotators import AnnotatorQualityConfig
from flywheel.config.base import _Section
from flywheel.config.resources import RESOURCES_HELP, ResourcesConfig

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


DEFAULT_EMBEDDER = "builtin:all-minilm-l6-v2"


DEFAULT_SEED = 0
PRECISION_HELP = (
    "Training arithmetic: bf16 runs each forward pass under bfloat16 autocast "
    "(float32 weights, optimizer state and loss; matrix products in bfloat16); auto does so "
    "where the device computes bfloat16 natively (a GPU that supports it, a CPU with "
    "AVX-512 BF16 or AMX: 1.5x float32's speed measured on a 2-core one) and stays float32 "
    "elsewhere; fp32: float32 throughout. Plain PyTorch only: a DeepSpeed config sets its own."
)
SEED_HELP = "Empty: the top-level `seed`."


class _Seeded(_Section):
    """A section with its own `seed`: given, it is used as it is; left empty, FlywheelConfig
    sets it from the top-level seed (`derive_seed`). A section made on its own takes the
    top-level default, 0."""

    seed: int | None = Field(None, description=SEED_HELP)

    @model_validator(mode="after")
    def _default_seed(self):
        if self.seed is None:  # written past validate_assignment: it stays "not given"
            self.__dict__["seed"] = DEFAULT_SEED
            self.__pydantic_fields_set__.discard("seed")
        return self

    def derive_seed(self, seed: int) -> None:
        """Take `seed` unless this section was given its own."""
        if "seed" not in self.model_fields_set:
            self.__dict__["seed"] = seed


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


class SamplingConfig(_Seeded):
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
    preprompt: str | None = Field(
        None,
        description="Annotation: on train prompts not tagged safety, both policies' responses "
        "are drawn with this text as the system prompt (in place of the prompt's own); the pair "
        "shows the prompt without it. Set to rejection_sampling.preprompt, the helpfulness "
        "reward model learns from answers like the ones it picks among there (in the demo its "
        "pick was no better for it: benchmarks/results/demo_stages.md, run E).",
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
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "float32",
        description="vLLM weights dtype. auto: bfloat16 where the device computes it natively "
        "(a GPU that supports it, a CPU with AVX-512 BF16 or AMX), float32 elsewhere (on CPUs "
        "without AVX-512 BF16 bfloat16 is emulated and several times slower).",
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
    seed: int | None = Field(
        None,
        description="The sampling engine's seed (empty: the top-level `seed`). vLLM's CPU build "
        "does not repeat its draws with it: two fresh engines seeded alike agreed on 0 of 16 "
        "and 1 of 384 answers (benchmarks/results/sampling_repeat.md), so a rerun draws other "
        "answers; what a run drew is in the lake's samples table.",
    )

    @model_validator(mode="after")
    def _positive_temperatures(self):
        if any(t < 0 for t in self.temperatures):
            raise ValueError("temperatures must be >= 0; use 0 for greedy decoding")
        if self.temperatures[0] == self.temperatures[1]:
            raise ValueError("temperatures must differ: in the first iteration the latest and "
                             "the previous policy are both the base policy, so at one "
                             "temperature they draw the same samples and the week has no pair "
                             "to label; give two values, e.g. [0.7, 1.0]")
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
    quality: AnnotatorQualityConfig = Field(
        AnnotatorQualityConfig(),
        description="Overlap and gold pairs, simulated annotators, quality thresholds of the "
        "mixes (`flywheel annotators`).",
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


class MixConfig(_Seeded):
    """The Llama 2 reward-model data mixes (flywheel/reward/mixes.py), over the lake's train
    rows."""

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
    seed: int | None = Field(None, description="Seed of the uniform sampling. " + SEED_HELP)


class RewardModelConfig(_Seeded):
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
    pooling: Literal["auto", "last", "mean", "first"] = Field(
        "auto",
        description="Where the scalar head reads the backbone: the last real token (a causal "
        "decoder's only state that has seen the whole sequence; Llama 2), the mean of the real "
        "tokens (an encoder such as the embedded default's all-MiniLM-L6-v2, pretrained with "
        "mean pooling), or the first token ([CLS]). auto: last for a causal decoder, mean "
        "otherwise. The trained model records it and is scored the same way.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field("fp32", description=PRECISION_HELP)
    center_coefficient: float = Field(
        0.0,
        ge=0,
        description="Adds coefficient x mean((r_chosen + r_rejected)^2) to the loss, so the "
        "scores centre on 0 (reward centering, Eisenstein et al. 2023). The ranking loss fixes "
        "only differences; R_c's safety gate reads the safety score's level (sigmoid < 0.15), "
        "so a model trained on little data can drift low and take over helpful prompts. "
        "Llama 2: 0.",
    )
    seed: int | None = Field(None, description="Seed of the head's initial weights and the "
                             "batch order. " + SEED_HELP)
    deepspeed: str | None = Field(
        None,
        description="Train through DeepSpeed with this config: a JSON file, or the name of one "
        "in infra/deepspeed/ (zero2-cpu runs on a CPU; zero3 for several GPUs). Empty: plain "
        "PyTorch.",
    )
    resources: ResourcesConfig = Field(ResourcesConfig(), description=RESOURCES_HELP)
    mix: MixConfig = MixConfig()
    promotion_tolerance: float = Field(
        0.02,
        ge=0,
        le=1,
        description="A retrained reward model replaces the current one unless its accuracy on "
        "one of the current model's test sets drops by more than this.",
    )


class ScoringConfig(_Section):
    """The scoring engine (flywheel/reward/scoring.py) that rejection sampling, reward-model
    evaluation and PPO score through."""

    token_budget: int = Field(
        4096, ge=64, description="Padded tokens per forward pass; raise it on a GPU."
    )
    reuse_prefix: bool = Field(
        True,
        description="Run each prompt once for all its responses when the backbone is a causal "
        "decoder (the scores are the same either way).",
    )
