"""How much GPU memory each rank of a training stage needs, from the models' configs alone (no
weights read): parameters, gradients, optimizer state and activations per rank, under the
stage's ZeRO stage and number of ranks, and whether that fits a card (`flywheel
plan-resources`).

Model states, bytes per parameter (AdamW, as the steppers in flywheel/training.py train):

                          weights  gradients  optimizer                               all
    mixed (bf16 or fp16)     2        2       12 = fp32 master 4 + moments m 4, v 4    16
    fp32                     4        4        8 = moments m 4, v 4                     16

Mixed precision is a DeepSpeed config with `bf16` or `fp16` enabled; plain PyTorch (no
`deepspeed`) and a DeepSpeed config without them train in fp32, as the code loads the models.
ZeRO (Rajbhandari et al. 2019) over N ranks: stage 0 (plain data parallel, or no DeepSpeed)
holds everything on every rank; stage 1 partitions the optimizer state (/N), stage 2 also the
gradients, stage 3 also the weights. ZeRO-3 gathers each block's weights while it computes: two
blocks (the one in use and the next, prefetched) are counted whole on top of the shard.
`offload_optimizer` moves the optimizer state to CPU memory, `offload_param` (stage 3) the
weight shards; they are reported as `offloaded`, off the GPU. DeepSpeed's communication buckets
(reduce_bucket_size 5e7 elements: 0.1-0.2 GB) and its keeping of parameters under
`stage3_param_persistence_threshold` whole are left to the headroom.

Frozen models (PPO's reference policy and two reward models) are in fp32 as
flywheel/policy/ppo_job.py loads them: whole on every rank (`policy_update.ppo.frozen:
replicated`), or 1/N of each on each of N ranks plus the largest gathered whole while it scores
(`sharded`, flywheel/distributed/frozen.py). PPO refuses ZeRO-3 for actor and critic (it
samples from and syncs whole weights).

Activations, per micro-batch on a rank, activation checkpointing off: the tensors the forward
saves for the backward, counted for transformers' Llama layer the way Korthikanti et al. 2022
("Reducing activation recomputation in large transformer models", section 4.1) count GPT's
34 s b h + 5 a s^2 b bytes per layer. Per token, in bytes, bf16 training:

    two RMSNorms    2 x (fp32 copy of the input 4h + normalised 2h + weighted 2h)   16h
    attention       Q 2h, K and V 2 x 2h g (g = kv heads / heads), output 2h    4h + 4h g
    MLP (SwiGLU)    gate, SiLU(gate), up, their product: 4 x 2 I                      8 I

that is 20h + 4h g + 8I per layer (7B: 45.5h; 70B: 48.5h; GPT's 34h with dropout and a 4h
GeLU MLP for comparison), plus the final norm's 6h. With fused attention (SDPA's flash or
memory-efficient kernel, transformers' default), which saves no s x s attention matrix:
Korthikanti's 5 a s^2 b term is gone, and the kernel's output layout makes o_proj's input a view
of it. fp32 training doubles everything but the norms, whose fp32 copy is then the input itself:
32h + 8h g + 16I per layer, 8h for the final norm. tests/test_memory_plan.py checks these
against the tensors autograd saves for the tiny Llama, in both precisions.
The output head adds 8 bytes x tokens x vocab where the loss reads full fp32 logits (rejection
sampling's cross-entropy: the fp32 logits and their log-softmax), the model's bytes per element
x tokens x vocab for PPO's actor (its logits stay for the entropy), and nothing where
`kernels.head_logprobs` reads log-probs off the hidden states (RRHF, below ZeRO-3; under it, the
full logits as in rejection sampling) or a scalar head scores.
Trained models run their forward and backward one after another (PPO: actor, then critic), so
a stage's activations are the largest model's.

A card fits a plan when the plan's total per rank, plus on rank 0's card the vLLM engine the
stage sampled with and keeps open while it trains (`sampling.gpu_memory_utilization` of the
card; rejection sampling's and RRHF's shared sampler, PPO's rollout engine; a process that runs
several stages, as the embedded default does, may keep a second one), stays under (1 -
`HEADROOM`) of its memory: 10 % is kept free for the CUDA context (0.5-1 GB), the caching
allocator's fragmentation, NCCL's buffers and DeepSpeed's buckets. GB here is 10^9 bytes (an
"80 GB" H100 or A100 holds 80 GiB = 85.9 GB, so the default is conservative by 7 %).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Literal

from flywheel.errors import ModelNotFoundError
from flywheel.training import deepspeed_config, zero_stage

GB = 1e9
HEADROOM = 0.10
STAGES = ("reward_model", "rejection_sampling", "rrhf", "ppo")
Head = Literal["lm", "scalar"]  # a causal LM's vocabulary head, or a backbone + scalar head
LLAMA_LAYOUT = ("llama", "mistral")  # the layer `param_count`'s closed form describes


@dataclass(frozen=True)
class Shape:
    """What the formulas read of a model's config."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    attention_bias: bool = False
    mlp_bias: bool = False


@lru_cache(maxsize=32)
def _config_of_name(name: str):
    from transformers import AutoConfig

    from flywheel.models import resolve

    try:
        return AutoConfig.from_pretrained(resolve(name))
    except OSError as e:
        raise ModelNotFoundError(f"cannot read the config of model {name!r} ({e}); give a "
                                 "local Hugging Face folder (its config.json is enough), a "
                                 "builtin: name, or a hub name this machine can fetch") from e


def model_config(model):
    """The transformers config of `model`: a config name (builtin:, a folder, a hub name) or a
    `PretrainedConfig`, returned as it is. Reads config.json only, never the weights."""
    from transformers import PretrainedConfig

    return model if isinstance(model, PretrainedConfig) else _config_of_name(model)


def shape_of(model) -> Shape:
    c = model_config(model)
    c = c.get_text_config() if hasattr(c, "get_text_config") else c
    heads = c.num_attention_heads
    return Shape(c.model_type, c.vocab_size, c.hidden_size, c.num_hidden_layers, heads,
                 getattr(c, "num_key_value_heads", None) or heads,
                 getattr(c, "head_dim", None) or c.hidden_size // heads,
                 getattr(c, "intermediate_size", None) or 4 * c.hidden_size,
                 bool(getattr(c, "tie_word_embeddings", True)),
                 bool(getattr(c, "attention_bias", False)), bool(getattr(c, "mlp_bias", False)))


def param_count(model, head: Head = "lm") -> int:
    """Parameters of `model` as a causal LM (`head` "lm": the vocabulary head, none of its own
    when tied to the embeddings) or as a reward model or critic ("scalar": the backbone without
    the vocabulary head, plus Linear(hidden, 1) with a bias, as RewardModel and ValueModel
    build it). Llama and Mistral by the closed form, per layer:

        attention  h (n_heads d) + 2 h (n_kv d) + (n_heads d) h    q, k, v (GQA), o
        MLP        3 h I                                           gate, up, down
        norms      2 h                                             two RMSNorm weights

    plus the embeddings V h and the final norm h (biases where the config asks for them).
    Another architecture is built on the meta device (no memory) and counted."""
    s = shape_of(model)
    if s.model_type not in LLAMA_LAYOUT:
        return _count_on_meta(model_config(model), head)
    h, q, kv = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    attention = 2 * h * q + 2 * h * kv + ((q + 2 * kv + h) if s.attention_bias else 0)
    mlp = 3 * h * s.intermediate + ((2 * s.intermediate + h) if s.mlp_bias else 0)
    trunk = s.vocab * h + s.layers * (attention + mlp + 2 * h) + h
    if head == "scalar":
        return trunk + h + 1
    return trunk + (0 if s.tied else s.vocab * h)


def _count_on_meta(config, head: Head) -> int:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        model = (AutoModelForCausalLM if head == "lm" else AutoModel).from_config(config)
    n = sum(p.numel() for p in model.parameters())
    return n if head == "lm" else n + config.hidden_size + 1


@dataclass(frozen=True)
class Training:
    """How a stage trains, read from its `deepspeed` setting (None: plain PyTorch)."""

    zero: int = 0
    mixed: bool = False  # bf16/fp16 weights and gradients with an fp32 master copy
    offload_optimizer: bool = False
    offload_params: bool = False
    deepspeed: str | None = None

    @property
    def precision(self) -> str:
        return "bf16 mixed" if self.mixed else "fp32"

    def at_zero(self, zero: int) -> Training:
        """The same precision and offload at another ZeRO stage (param offload: stage 3 only)."""
        return replace(self, zero=zero, offload_params=self.offload_params and zero == 3)


def training_of(deepspeed: str | None) -> Training:
    if deepspeed is None:
        return Training()
    config = deepspeed_config(deepspeed, 1.0, 1)
    zo = config.get("zero_optimization") or {}
    stage = zero_stage(deepspeed)

    def offloaded(key: str) -> bool:
        return (zo.get(key) or {}).get("device") not in (None, "none")

    mixed = any((config.get(k) or {}).get("enabled") for k in ("bf16", "bfloat16", "fp16"))
    return Training(stage, mixed, offloaded("offload_optimizer"),
                    stage == 3 and offloaded("offload_param"), deepspeed)


@dataclass(frozen=True)
class ModelMemory:
    """One model of a stage on one rank; bytes."""

    role: str
    model: str
    params: int
    trained: bool
    weights: float
    gradients: float
    optimizer: float
    activations: float
    offloaded: float  # moved to CPU memory by DeepSpeed's offload


def model_states(params: int, t: Training, ranks: int) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer, offloaded) bytes one rank holds of a trained model of
    `params` parameters (the table in the module docstring; the ZeRO-3 gathered blocks aside)."""
    width = 2 if t.mixed else 4
    weights = params * width / (ranks if t.zero >= 3 else 1)
    grads = params * width / (ranks if t.zero >= 2 else 1)
    optimizer = params * (12 if t.mixed else 8) / (ranks if t.zero >= 1 else 1)
    offloaded = 0.0
    if t.offload_optimizer:
        offloaded, optimizer = offloaded + optimizer, 0.0
    if t.offload_params:
        offloaded, weights = offloaded + weights, 0.0
    return weights, grads, optimizer, offloaded


def activation_bytes(s: Shape, sequences: int, tokens: int, mixed: bool,
                     logits: float = 0.0) -> float:
    """Bytes one micro-batch of `sequences` x `tokens` saves for the backward (module
    docstring), plus `logits` bytes per token per vocabulary entry for the output head."""
    h, g, i = s.hidden, s.kv_heads / s.heads, s.intermediate
    if mixed:
        per_layer, final_norm = 20 * h + 4 * h * g + 8 * i, 6 * h
    else:
        per_layer, final_norm = 32 * h + 8 * h * g + 16 * i, 8 * h
    n = sequences * tokens
    return n * (s.layers * per_layer + final_norm + s.vocab * logits)


def _largest_block(s: Shape, params: int) -> float:
    """Parameters of the largest piece ZeRO-3 gathers at once: a layer, or the embeddings."""
    embeddings = s.vocab * s.hidden
    return max(embeddings, (params - embeddings * (1 if s.tied else 2)) / s.layers)


def trained_model(role: str, model, head: Head, t: Training, ranks: int, sequences: int,
                  tokens: int, logits: float = 0.0) -> ModelMemory:
    s, n = shape_of(model), param_count(model, head)
    weights, grads, optimizer, offloaded = model_states(n, t, ranks)
    if t.zero >= 3 and ranks > 1:  # one rank's shard is the whole model: nothing to gather
        weights += 2 * _largest_block(s, n) * (2 if t.mixed else 4)
    return ModelMemory(role, _name(model), n, True, weights, grads, optimizer,
                       activation_bytes(s, sequences, tokens, t.mixed, logits), offloaded)


def frozen_model(role: str, model, head: Head, width: int = 4, ranks: int = 1) -> ModelMemory:
    """A model held for inference, `width` bytes per parameter: whole on every rank, or
    (`ranks` > 1) 1/ranks of it on each."""
    n = param_count(model, head)
    return ModelMemory(role, _name(model), n, False, n * width / ranks, 0.0, 0.0, 0.0, 0.0)


def _name(model) -> str:
    return model if isinstance(model, str) else getattr(model, "name_or_path", "") or "config"


@dataclass(frozen=True)
class StagePlan:
    """The memory of one training stage on each rank (bytes)."""

    stage: str
    training: Training
    ranks: int
    sequences: int  # per micro-batch on a rank
    tokens: int  # per sequence (an upper bound: max_length)
    models: tuple[ModelMemory, ...]
    sampling_share: float = 0.0  # of rank 0's card, taken by the vLLM engine kept open
    refused: str | None = None  # why the stage refuses this ZeRO stage

    @property
    def weights(self) -> float:
        return sum(m.weights for m in self.models)

    @property
    def gradients(self) -> float:
        return sum(m.gradients for m in self.models)

    @property
    def optimizer(self) -> float:
        return sum(m.optimizer for m in self.models)

    @property
    def activations(self) -> float:  # trained models run one after another
        return max(m.activations for m in self.models)

    @property
    def offloaded(self) -> float:
        return sum(m.offloaded for m in self.models)

    @property
    def total(self) -> float:
        """GPU bytes per rank, the vLLM engines aside."""
        return self.weights + self.gradients + self.optimizer + self.activations

    def needed(self, gpu_bytes: float) -> float:
        """GPU bytes rank 0 needs on a card of `gpu_bytes`: the total and the vLLM engine."""
        return self.total + self.sampling_share * gpu_bytes

    def fits(self, gpu_bytes: float, headroom: float = HEADROOM) -> bool:
        """Whether every rank fits a card of `gpu_bytes`, `headroom` of it kept free."""
        return self.refused is None and self.needed(gpu_bytes) <= (1 - headroom) * gpu_bytes

    def to_dict(self, gpu_bytes: float, headroom: float = HEADROOM) -> dict:
        return {**asdict(self), "params": sum(m.params for m in self.models if m.trained),
                **{k: getattr(self, k) for k in ("weights", "gradients", "optimizer",
                                                 "activations", "offloaded", "total")},
                "vllm": self.sampling_share * gpu_bytes, "gpu_bytes": gpu_bytes,
                "headroom": headroom, "fits": self.fits(gpu_bytes, headroom)}


def plan_stage(cfg, stage: str, ranks: int | None = None, zero: int | None = None) -> StagePlan:
    """The plan of `stage` (one of STAGES) of the FlywheelConfig `cfg`: its ZeRO stage,
    precision and offload from the section's `deepspeed`, its ranks from `resources.plan()`,
    micro-batch and length from the section; `ranks` and `zero` override those two."""
    pu, sampling = cfg.policy_update, cfg.sampling
    section = {"reward_model": cfg.reward_model, "rejection_sampling": cfg.rejection_sampling,
               "rrhf": pu.rrhf, "ppo": pu.ppo}.get(stage)
    if section is None:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    t = training_of(section.deepspeed)
    t = t if zero is None else t.at_zero(zero)
    n = ranks or math.prod(section.resources.plan())
    engines = sampling.gpu_memory_utilization if sampling.backend == "vllm" else 0.0
    policy, backbone = cfg.models.policy, cfg.models.reward_backbone
    refused = None
    if stage == "reward_model":
        # a pair is two sequences; grouped by prompt, an element is a prompt's 2n responses
        per = 2 * (sampling.responses_per_policy if section.group_by_prompt else 1)
        seqs = per * min(section.micro_batch_size, math.ceil(section.batch_size / n))
        models = (trained_model("reward model", backbone, "scalar", t, n, seqs,
                                section.max_length),)
        tokens, share = section.max_length, 0.0
    elif stage == "rejection_sampling":
        seqs = min(section.micro_batch_size, math.ceil(section.batch_size / n))
        models = (trained_model("policy", policy, "lm", t, n, seqs, section.max_length, 8.0),)
        tokens, share = section.max_length, engines
    elif stage == "rrhf":
        seqs = cfg.rejection_sampling.k  # one prompt's K responses in one forward
        # under ZeRO-3 the log-probs come from the full logits (policy/rrhf.py), as in SFT
        models = (trained_model("policy", policy, "lm", t, n, seqs, section.max_length,
                                8.0 if t.zero >= 3 else 0.0),)
        tokens, share = section.max_length, engines
    else:
        seqs = math.ceil(section.minibatch / n)
        tokens = sampling.max_model_len  # a rollout's prompt and response fit vLLM's limit
        shards = n if section.frozen == "sharded" else 1
        frozen = (frozen_model("reference", policy, "lm", ranks=shards),
                  frozen_model("reward model (helpfulness)", backbone, "scalar", ranks=shards),
                  frozen_model("reward model (safety)", backbone, "scalar", ranks=shards))
        if shards > 1:  # one of them gathered whole while it scores: the largest counts
            big = max(frozen, key=lambda m: m.params)
            frozen += (ModelMemory("frozen model gathered to score", big.model, big.params,
                                   False, big.params * 4.0, 0.0, 0.0, 0.0, 0.0),)
        models = (
            trained_model("actor", policy, "lm", t, n, seqs, tokens, 2.0 if t.mixed else 4.0),
            trained_model("critic", policy, "scalar", t, n, seqs, tokens),
            *frozen,
        )
        share = engines  # PPO closes the shared engines and opens its own rollout engine
        if t.zero >= 3:
            refused = "PPO samples from and syncs whole weights"
    return StagePlan(stage, t, n, seqs, tokens, models, share, refused)


def plan_all(cfg, ranks: int | None = None, zero: int | None = None) -> list[StagePlan]:
    return [plan_stage(cfg, stage, ranks, zero) for stage in STAGES]
