"""What the reward-model and policy training loops share: the step plan, the optimizer with
linear warmup and cosine decay, the shuffled batches of each epoch, and the steppers that run
one optimizer step over gradient-accumulated micro-batches, in plain PyTorch or through
DeepSpeed (configs in infra/deepspeed/)."""

from __future__ import annotations

import json
import math
import os
import random
import socket
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

import torch

from flywheel.devices import model_device
from flywheel.distributed.ranks import all_sum, sum_gradients, world
from flywheel.errors import ConfigError

# Who hears of each optimizer step of the training loops (what, steps done, steps in all): the
# orchestrator sets it around a stage (tasks/progress.py shows it as a Prefect progress
# artifact); the library only calls it, so it stays free of any orchestrator.
on_step: ContextVar[Callable[[str, int, int], None] | None] = ContextVar("on_step", default=None)


def report_step(what: str, done: int, total: int) -> None:
    if (listener := on_step.get()) is not None:
        listener(what, done, total)


def lr_lambda(steps: int, warmup: int, floor: float = 0.1):
    """Linear warmup, then cosine decay to `floor` times the max learning rate."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def plan_steps(n_examples: int, batch_size: int, epochs: int) -> tuple[int, int]:
    """(optimizer steps, warmup steps): warmup is 3 % of the steps, at least 5, but never more
    than a quarter of a short run."""
    steps = math.ceil(n_examples / batch_size) * epochs
    return steps, min(max(5, math.ceil(0.03 * steps)), max(1, steps // 4))


def fused_adamw_fits(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW can update these parameters: floating-point tensors on the
    CPU or a CUDA device. One kernel over all of them instead of a loop over each: on 2 Xeon
    cores the 135M policy's clip and update took 0.27 s instead of 0.61, a whole fine-tuning
    step 0.92x the time (benchmarks/results/finetune_step.md); the same update, up to
    rounding."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                for p in params)


def adamw_with_schedule(model: torch.nn.Module, lr: float, steps: int, warmup: int):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=fused_adamw_fits(params) or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup))


def epoch_batches(n_examples: int, batch_size: int, epochs: int, seed: int) -> Iterator[list[int]]:
    """Indices of each optimizer step's examples, reshuffled every epoch from `seed`."""
    order = list(range(n_examples))
    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, n_examples, batch_size):
            yield order[start : start + batch_size]


# --- steppers: one optimizer step over gradient-accumulated micro-batches -------------------

# The DeepSpeed config keys the training loop sets; a config file must leave them out.
LOOP_OWNED_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "gradient_clipping", "optimizer", "scheduler",
)
DEEPSPEED_CONFIGS = Path(__file__).resolve().parents[1] / "infra" / "deepspeed"
_WEIGHT_TOL = 1e-6


class Stepper:
    """AdamW (betas 0.9, 0.95, no weight decay) with `lr_lambda`'s schedule and the gradient norm
    clipped to 1.0, fed one micro-batch at a time, on one rank or several. Forward through
    `module`; for each micro-batch call `backward(mean loss, weight, last)`, where the weights of
    one step's micro-batches, over all ranks, are their shares of the step's examples and sum
    to 1 (so the step's loss is the sum of weight * loss), and `last` marks this rank's last
    micro-batch of the step (`flywheel.distributed.ranks.rank_micro_batches` gives all three);
    then `step()`. The last step of an epoch may have fewer micro-batches than the others."""

    module: torch.nn.Module  # what to call forward on
    model: torch.nn.Module  # the model it trains (a DeepSpeed engine's module)
    partitioned = False  # the model holds shards of its weights only (ZeRO-3)

    def __init__(self) -> None:
        self.world = world()
        self._weight = 0.0  # sum of this rank's weights since the last step

    def backward(self, loss: torch.Tensor, weight: float, last: bool) -> None:
        if self._weight + weight > 1 + _WEIGHT_TOL:
            raise ValueError(f"micro-batch weights of one step sum past 1 "
                             f"({self._weight} + {weight}); call step() after each step's last")
        self._weight += weight
        self._backward(loss * weight, last)

    def step(self) -> None:
        (total,) = all_sum([self._weight], self.world)
        if abs(total - 1) > _WEIGHT_TOL:
            raise ValueError(f"micro-batch weights of this step sum to {total:.6g} over "
                             f"{self.world.size} rank(s), not 1")
        self._weight = 0.0
        self._step()

    @property
    def lr(self) -> float:
        """The learning rate the next step applies."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where `module` computes: the micro-batches' tensors go there."""
        raise NotImplementedError

    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        """The model's full state dict, gathered from every partition if need be."""
        raise NotImplementedError

    def optimizer_state_bytes(self) -> int:
        """Bytes of optimizer state (AdamW's two moments) this rank holds: all of it on plain
        PyTorch, its partition under ZeRO."""
        opt = getattr(self, "optimizer", None) or self.engine.optimizer
        while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
            opt = opt.optimizer  # DeepSpeed's ZeRO optimizers wrap torch's
        return sum(v.numel() * v.element_size() for state in opt.state.values()
                   for v in state.values() if torch.is_tensor(v) and v.dim() > 0)

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError


class TorchStepper(Stepper):
    def __init__(self, model: torch.nn.Module, lr: float, steps: int, warmup: int):
        super().__init__()
        self.module = self.model = model
        self.optimizer, self.scheduler = adamw_with_schedule(model, lr, steps, warmup)

    def _backward(self, loss, last):
        loss.backward()

    def _step(self):
        sum_gradients(self.module.parameters(), self.world)  # every rank takes the same step
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]

    @property
    def device(self):
        return model_device(self.module)  # where the caller placed the model

    def state_dict_for_save(self):
        return self.module.state_dict()


class DeepSpeedStepper(Stepper):
    """The same step through a DeepSpeed engine. DeepSpeed counts micro-batches itself (it steps
    every `gradient_accumulation_steps` backwards and divides each loss by that number); here the
    loss goes in unscaled and the accumulation boundary is set by the loop instead, so a short
    last step reduces and updates like a full one. DeepSpeed averages the gradients over the
    ranks; the loss is multiplied by the number of ranks so that they sum, as the weights
    assume."""

    def __init__(self, engine):
        super().__init__()
        self.engine = self.module = engine
        self.model = engine.module
        self.partitioned = bool(engine.zero_optimization_partition_weights())

    def _backward(self, loss, last):
        # set before the backward: ZeRO reduces (or offloads) the gradients on the boundary one
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world.size, scale_wrt_gas=False)

    def _step(self):
        # on the boundary: clip, optimizer step, scheduler step, zero the gradients
        self.engine.step()

    @property
    def lr(self):
        return self.engine.get_lr()[0]

    @property
    def device(self):
        # the engine's local-rank device; under ZeRO-3 the module holds only empty shards
        return self.engine.device

    def state_dict_for_save(self):
        """ZeRO-3 partitions the parameters: gather them into 16-bit weights (on rank 0; None on
        the other ranks; every rank must call this). Needs
        `stage3_gather_16bit_weights_on_model_save: true` in the config to be saved by
        DeepSpeed's own save_16bit_model, which this mirrors. Other stages hold full weights."""
        if self.partitioned:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.engine.module.state_dict()


def make_stepper(model: torch.nn.Module, lr: float, steps: int, warmup: int, micro_steps: int,
                 deepspeed: str | None = None, setting: str = "reward_model.deepspeed"
                 ) -> Stepper:
    """A plain PyTorch stepper, or with `deepspeed` (a DeepSpeed JSON config: a path ending in
    .json, or a name in infra/deepspeed/) one through a DeepSpeed engine. `micro_steps` is the
    number of micro-batches of a full step on one rank; `steps` and `warmup` drive `lr_lambda`;
    `setting` names the config key that asked for DeepSpeed, for the error when it is missing.

    The plain stepper trains the model where the caller placed it (`compute_device()` for the
    training loops); a DeepSpeed engine moves it to its local rank's device. Either way
    `Stepper.device` says where the micro-batches go.

    The first DeepSpeed stepper of a process initialises torch.distributed (a one-process group
    unless a launcher set RANK, WORLD_SIZE, ...) and it stays so: DeepSpeed caches its groups,
    and later engines in the same process reuse them."""
    if micro_steps < 1:
        raise ValueError(f"micro_steps must be at least 1, got {micro_steps}")
    if deepspeed is None:
        return TorchStepper(model, lr, steps, warmup)
    engine = deepspeed_initialize(
        model, deepspeed_config(deepspeed, lr, micro_steps), setting,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup)),
    )
    return DeepSpeedStepper(engine)


def deepspeed_initialize(model: torch.nn.Module, config: dict, setting: str, **kwargs):
    """A DeepSpeed engine for `model` with `config` (its trainable parameters; `kwargs` go to
    deepspeed.initialize). The first engine of a process initialises torch.distributed. An
    uninstalled deepspeed fails naming `setting`, the config key that asked for it."""
    try:
        import deepspeed as ds
    except ImportError as e:
        raise ConfigError(
            f"{setting} is set but deepspeed is not importable ({e}): "
            "`pip install --no-build-isolation deepspeed` after torch, or clear "
            f"{setting} to train with plain PyTorch"
        ) from e
    if not torch.distributed.is_initialized():
        _single_process_env()
        ds.init_distributed()
    engine, *_ = ds.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=config,
        **kwargs,
    )
    return engine


def deepspeed_config(name: str, lr: float, micro_steps: int) -> dict:
    """The config file's settings (ZeRO stage, precision, offload) plus the keys the loop owns.
    The optimizer is torch's AdamW, as in TorchStepper, except under optimizer offload, where
    DeepSpeed's CPU AdamW (same update, run on the CPU) is the one that works with it."""
    path = Path(name).expanduser() if name.endswith(".json") else DEEPSPEED_CONFIGS / f"{name}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in DEEPSPEED_CONFIGS.glob("*.json"))) or "none"
        raise ConfigError(
            f"DeepSpeed config {name!r} not found ({path}); name one in infra/deepspeed/ "
            f"({names}) or give the path of a .json file"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"DeepSpeed config {path} must hold a JSON object, got {config!r:.60}")
    owned = [k for k in LOOP_OWNED_KEYS if k in config]
    if owned:
        raise ConfigError(
            f"DeepSpeed config {path} sets {', '.join(owned)}: the training loop sets these from "
            "its own config (learning rate, batch sizes, clipping 1.0); remove them from the file"
        )
    offload = ((config.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device")
    params = {"lr": lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0}
    if offload in (None, "none"):
        params["torch_adam"] = True
    return {
        **config,
        # only DeepSpeed's throughput log and data loader read this: the loop batches itself
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": micro_steps,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": params},
    }


def zero_stage(name: str) -> int:
    """The ZeRO stage of the DeepSpeed config `name` (0 when it sets none)."""
    config = deepspeed_config(name, 1.0, 1)
    return int((config.get("zero_optimization") or {}).get("stage", 0))


def _single_process_env() -> None:
    """DeepSpeed's launcher (or torchrun) sets these; a plain one-process run gets defaults."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
