"""The steppers: plain PyTorch and DeepSpeed (ZeRO-2 and ZeRO-3, in one process on this CPU) take
the same steps, including a short last step of an epoch, and bad DeepSpeed configs fail with the
fix in the message."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from flywheel.errors import ConfigError
from flywheel.training import DEEPSPEED_CONFIGS, epoch_batches, make_stepper

N, BATCH, MICRO, EPOCHS, LR = 12, 5, 3, 2, 0.05
MICRO_STEPS = math.ceil(BATCH / MICRO)  # 2
STEPS, WARMUP = math.ceil(N / BATCH) * EPOCHS, 2  # 6 steps: 5, 5 and 2 examples per epoch


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 8, generator=g)
    # targets of size ~3 make the first gradients' norm exceed 1: clipping takes part
    return x, 3 * torch.sin(x.sum(1, keepdim=True))


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def train(stepper):
    """The loop of the reward model: each step's examples in micro-batches of MICRO, each
    micro-batch's mean loss weighted by its share of the step's examples. Epochs of 12 examples
    in steps of 5 give steps of 5, 5, 2: micro-batches (3, 2), (3, 2), then (2,) alone."""
    x, y = data()
    lrs, losses, shapes = [], [], []
    for idx in epoch_batches(N, BATCH, EPOCHS, seed=0):
        lrs.append(stepper.lr)
        step_loss, micro = 0.0, []
        for m in range(0, len(idx), MICRO):
            sel = idx[m : m + MICRO]
            loss = torch.nn.functional.mse_loss(stepper.module(x[sel]), y[sel])
            stepper.backward(loss, len(sel) / len(idx), m + MICRO >= len(idx))
            step_loss += loss.item() * len(sel) / len(idx)
            micro.append(len(sel))
        stepper.step()
        losses.append(step_loss)
        shapes.append(tuple(micro))
    return lrs, losses, shapes


def full_loss(model):
    x, y = data()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x), y).item()


@pytest.fixture(scope="module")
def deepspeed_installed():
    pytest.importorskip(
        "deepspeed", reason="deepspeed not installed (`make` installs it; "
        "`pip install --no-build-isolation deepspeed` after torch)",
    )


def test_plain_stepper_schedule_and_loss():
    """lr_lambda(6 steps, warmup 2) by hand: warmup (0+1)/2 = 0.5, (1+1)/2 = 1; then progress
    p = (step - 2) / 4 and 0.1 + 0.9 * (1 + cos(pi p)) / 2: p = 0 -> 1, 1/4 -> 0.868198,
    1/2 -> 0.55, 3/4 -> 0.231802."""
    model = tiny_model()
    before = full_loss(model)
    lrs, _, shapes = train(make_stepper(model, LR, STEPS, WARMUP, MICRO_STEPS))
    assert shapes == [(3, 2), (3, 2), (2,)] * 2
    expected = [0.5, 1.0, 1.0, 0.868198, 0.55, 0.231802]
    assert lrs == pytest.approx([LR * f for f in expected], rel=1e-5)
    assert full_loss(model) < 0.8 * before


def test_first_gradient_is_clipped():
    """The data above must exercise clipping, or the comparison below would not cover it."""
    model = tiny_model()
    x, y = data()
    torch.nn.functional.mse_loss(model(x[:BATCH]), y[:BATCH]).backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm > 1.5


def test_deepspeed_zero2_matches_plain(deepspeed_installed):
    """Same seed, same data, same schedule: the ZeRO-2 engine ends on the same parameters as
    plain PyTorch (to 1e-5 of the size of the whole update), with the same learning rate and
    loss at every step. Two engines in turn: a process can hold more than one. (The first one
    initialises torch.distributed for the rest of the process, as make_stepper says.)"""
    init = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    plain = tiny_model()
    plain_lrs, plain_losses, _ = train(make_stepper(plain, LR, STEPS, WARMUP, MICRO_STEPS))
    update = max((plain.state_dict()[k] - v).abs().max().item() for k, v in init.items())
    assert update > 1e-2

    for _ in range(2):
        model = tiny_model()
        stepper = make_stepper(model, LR, STEPS, WARMUP, MICRO_STEPS, deepspeed="zero2-cpu")
        assert stepper.module is not model  # the engine wraps it
        lrs, losses, _ = train(stepper)
        assert lrs == pytest.approx(plain_lrs, rel=1e-6)
        assert losses == pytest.approx(plain_losses, rel=1e-5)
        assert full_loss(model) < 0.8 * full_loss(tiny_model())
        saved = stepper.state_dict_for_save()
        assert saved.keys() == plain.state_dict().keys()
        for k, v in plain.state_dict().items():
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-5 * update)
            torch.testing.assert_close(saved[k], v, rtol=0, atol=1e-5 * update)


# DeepSpeed's ZeRO-3 calls collectives that torch 2.13 deprecates, warning at every step
@pytest.mark.filterwarnings("ignore:`torch.distributed.\\w+` is deprecated:FutureWarning")
def test_deepspeed_zero3_partitions_and_saves_full_weights(deepspeed_installed, tmp_path):
    """infra/deepspeed/zero3.json in fp32 (this CPU has no fast bf16) and with every parameter
    partitioned (persistence threshold 0; the file keeps parameters under 1e5 elements whole):
    the module's parameters are empty shards, yet the steps match plain PyTorch and
    state_dict_for_save gathers the full weights."""
    config = json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())
    config["bf16"]["enabled"] = False
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3-fp32.json").write_text(json.dumps(config))

    plain = tiny_model()
    plain_lrs, plain_losses, _ = train(make_stepper(plain, LR, STEPS, WARMUP, MICRO_STEPS))
    model = tiny_model()
    stepper = make_stepper(model, LR, STEPS, WARMUP, MICRO_STEPS,
                           deepspeed=str(tmp_path / "zero3-fp32.json"))
    lrs, losses, _ = train(stepper)
    assert all(p.numel() == 0 for p in model.parameters())
    assert lrs == pytest.approx(plain_lrs, rel=1e-6)
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    saved = stepper.state_dict_for_save()
    assert saved.keys() == plain.state_dict().keys()
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=1e-6)


def test_weights_of_a_step_must_sum_to_one():
    stepper = make_stepper(tiny_model(), LR, STEPS, WARMUP, MICRO_STEPS)
    x, y = data()
    stepper.backward(torch.nn.functional.mse_loss(stepper.module(x[:3]), y[:3]), 0.6, True)
    with pytest.raises(ValueError, match="sum to 0.6"):
        stepper.step()


def test_unknown_config_name_lists_the_names():
    with pytest.raises(ConfigError) as e:
        make_stepper(tiny_model(), LR, STEPS, WARMUP, MICRO_STEPS, deepspeed="zero9")
    for name in ("'zero9'", "zero2-cpu", "zero3", "zero3-offload"):
        assert name in str(e.value)


def test_config_may_not_set_what_the_loop_owns(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5,
                                "optimizer": {"type": "SGD"}}))
    with pytest.raises(ConfigError, match="sets gradient_clipping, optimizer"):
        make_stepper(tiny_model(), LR, STEPS, WARMUP, MICRO_STEPS, deepspeed=str(path))


def test_missing_deepspeed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # makes `import deepspeed` fail
    with pytest.raises(ConfigError, match="pip install --no-build-isolation deepspeed"):
        make_stepper(tiny_model(), LR, STEPS, WARMUP, MICRO_STEPS, deepspeed="zero2-cpu")
