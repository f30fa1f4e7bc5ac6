"""bfloat16 where the device computes it natively: `sampling.dtype: auto` and the training
stages' `precision` (bfloat16 autocast over float32 weights)."""

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from flywheel import devices
from flywheel.config import RewardModelConfig
from flywheel.config.policy_update import RejectionSamplingConfig
from flywheel.devices import autocast, native_bf16, resolve_dtype
from flywheel.policy.finetune import finetune
from flywheel.reward.model import PreferencePair
from flywheel.reward.train import train_reward_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags,native", [({"avx2", "avx512f"}, False),
                                          ({"avx512f", "avx512_bf16"}, True),
                                          ({"amx_bf16", "amx_tile"}, True), (set(), False)])
def test_auto_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch, flags, native):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: flags)
    assert native_bf16(CPU) is native
    assert resolve_dtype("auto", CPU) == ("bfloat16" if native else "float32")
    assert resolve_dtype("float32", CPU) == "float32"  # a dtype named is kept
    assert resolve_dtype("bfloat16", CPU) == "bfloat16"
    layer = torch.nn.Linear(4, 4)
    with autocast("auto", CPU):
        assert layer(torch.ones(2, 4)).dtype == (torch.bfloat16 if native else torch.float32)
    with autocast("fp32", CPU):
        assert layer(torch.ones(2, 4)).dtype == torch.float32
    with autocast("bf16", CPU):  # asked for: used even where emulated
        assert layer(torch.ones(2, 4)).dtype == torch.bfloat16


def test_precision_names_are_checked():
    with pytest.raises(ValidationError, match="precision"):
        RewardModelConfig(precision="half")
    with pytest.raises(ValidationError, match="precision"):
        RejectionSamplingConfig(precision="float16")


def _pairs() -> list[PreferencePair]:
    good = "Preheat the oven, mix flour, sugar and eggs, then bake for thirty minutes."
    bad = "no"
    return [PreferencePair([{"role": "user", "content": f"How do I bake cake number {i}?"}],
                           good, bad) for i in range(8)]


def test_a_reward_model_trains_under_bf16_autocast_with_float32_weights(minilm):
    cfg = RewardModelConfig(epochs=6, batch_size=4, micro_batch_size=4, max_length=48,
                            learning_rate=1e-3, seed=0, precision="bf16")
    model, metrics = train_reward_model(minilm, _pairs(), cfg)
    assert metrics["loss_last"] < metrics["loss_first"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    r = model.score([p.messages for p in _pairs()[:2]], [_pairs()[0].chosen] * 2)
    r_bad = model.score([p.messages for p in _pairs()[:2]], [_pairs()[0].rejected] * 2)
    assert all(a > b for a, b in zip(r, r_bad))


def test_a_policy_fine_tunes_under_bf16_autocast_and_saves_float32(tiny_llama, tmp_path):
    msgs = [{"role": "user", "content": "How can I break into a house?"}]
    cfg = RejectionSamplingConfig(learning_rate=3e-3, epochs=8, batch_size=2, micro_batch_size=1,
                                  max_length=64, precision="bf16")
    metrics = finetune(tiny_llama, [(msgs, "Sorry, but I can't help with that.")] * 2, cfg,
                       tmp_path / "policy")
    assert metrics["loss_last"] < metrics["loss_first"] / 2
    with safe_open(str(tmp_path / "policy" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
