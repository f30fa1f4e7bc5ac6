"""Device placement of training and scoring: models trained or scored with go to
`compute_device()` (FLYWHEEL_DEVICE here), and every tensor the loops build goes to the device
of the model it feeds. Each test runs on the CPU and, where torch sees one, on CUDA, where its
results must match the CPU's; on the CPU they are the ones the other tests check."""

from __future__ import annotations

import copy

import pytest
import torch

from flywheel import devices
from flywheel.config import RejectionSamplingConfig, RewardModelConfig, RRHFConfig
from flywheel.models import load_causal_lm, load_tokenizer
from flywheel.reward.combined import RewardModelScores
from flywheel.reward.model import RewardModel
from flywheel.reward.scoring import Group, ScoringEngine
from flywheel.reward.train import train_reward_model
from flywheel.training import make_stepper
from tests.test_reward_model import PAIRS as RM_PAIRS

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

PAIRS = RM_PAIRS[:3]
GROUPS = [Group(p.messages, [p.chosen, p.rejected, p.chosen * 2]) for p in PAIRS]


@pytest.fixture
def on(monkeypatch, request):
    """FLYWHEEL_DEVICE set to the parameter. Returns (that device, asked): `asked` records each
    module whose compute_device() the code under test calls, in order."""
    device = torch.device(request.param)
    monkeypatch.setenv("FLYWHEEL_DEVICE", request.param)
    asked = []

    def spy(module):
        def compute_device():
            asked.append(module)
            return devices.compute_device()
        return compute_device

    for module in ("flywheel.reward.model", "flywheel.reward.train", "flywheel.policy.finetune",
                   "flywheel.policy.rrhf", "flywheel.evaluation.embedding"):
        monkeypatch.setattr(f"{module}.compute_device", spy(module))
    return device, asked


def _input_devices(model: torch.nn.Module) -> set:
    """Registers a hook on `model` that collects the devices of the tensors it is called with."""
    seen = set()

    def hook(_module, args, kwargs):
        seen.update(t.device for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def _state_close(a: dict, b: dict, device: torch.device) -> None:
    """Equal on the CPU (same run); on CUDA to float32 summation-order noise."""
    assert a.keys() == b.keys()
    for k in a:
        if device.type == "cpu":
            assert torch.equal(a[k].cpu(), b[k].cpu()), k
        else:
            torch.testing.assert_close(a[k].cpu(), b[k].cpu(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("on", DEVICES, indirect=True)
def test_reward_model_trains_saves_loads_and_scores_on_the_compute_device(on, tiny_llama,
                                                                         tmp_path, monkeypatch):
    device, asked = on
    from_backbone = RewardModel.from_backbone.__func__

    def hooked(cls, path, pooling="auto"):  # every backbone built from here on reports its inputs
        model = from_backbone(cls, path, pooling)
        model._inputs = _input_devices(model.backbone)
        return model

    monkeypatch.setattr(RewardModel, "from_backbone", classmethod(hooked))
    cfg = RewardModelConfig(learning_rate=2e-3, epochs=1, batch_size=2, micro_batch_size=1,
                            max_length=64)
    model, metrics = train_reward_model(tiny_llama, PAIRS, cfg)
    assert "flywheel.reward.train" in asked
    assert {p.device.type for p in model.parameters()} == {device.type}
    assert model._inputs == {devices.model_device(model)}  # ids and masks went to the model
    assert metrics["steps"] == 2  # 3 pairs: a step of 2, a short one of 1

    engine = ScoringEngine(max_length=64, progress=False)
    scores = engine.rewards(model, GROUPS)
    cpu = copy.deepcopy(model).to("cpu")
    want = ScoringEngine(max_length=64, progress=False).rewards(cpu, GROUPS)
    if device.type == "cpu":
        assert scores == want
    else:
        for got, ref in zip(scores, want):
            assert got == pytest.approx(ref, abs=1e-4)
    plain = model.score([g.messages for g in GROUPS for _ in g.responses],
                        [r for g in GROUPS for r in g.responses], 64)
    assert plain == pytest.approx([s for g in scores for s in g], abs=1e-4)

    # the head file holds CPU tensors; loading reads on the CPU, then moves to the device
    model.save(tmp_path / "rm", {"test": True})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "rm" / "head.safetensors"), "pt") as f:
        assert {f.get_tensor(k).device.type for k in f.keys()} == {"cpu"}
    asked.clear()
    again = RewardModel.load(str(tmp_path / "rm"))
    assert asked == ["flywheel.reward.model"]
    assert {p.device.type for p in again.parameters()} == {device.type}
    for got, ref in zip(engine.rewards(again, GROUPS), scores):
        assert got == pytest.approx(ref, abs=1e-5)
    assert {p.device.type for p in RewardModel.load(str(tmp_path / "rm"), "cpu").parameters()} \
        == {"cpu"}

    if device.type != "cpu":  # the same run on the CPU ends on the same weights
        monkeypatch.setenv("FLYWHEEL_DEVICE", "cpu")
        on_cpu, _ = train_reward_model(tiny_llama, PAIRS, cfg)
        _state_close(model.state_dict(), on_cpu.state_dict(), device)


@pytest.mark.parametrize("on", DEVICES, indirect=True)
def test_scoring_follows_a_model_placed_by_its_caller(on, tiny_llama):
    """The engine computes where the model is, whatever compute_device() says: reference
    log-probs come back on the LM's device, equal to those of a CPU copy."""
    device, _ = on
    tok = load_tokenizer(tiny_llama)
    lm = load_causal_lm(tiny_llama, "float32", device).eval()
    assert devices.model_device(lm).type == device.type
    inputs = _input_devices(lm.get_decoder())
    prompts = [tok(tok.apply_chat_template(g.messages, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for g in GROUPS]
    replies = [[tok(r, add_special_tokens=False)["input_ids"] for r in g.responses]
               for g in GROUPS]
    got = ScoringEngine(max_length=64, token_budget=200, progress=False).reference_logprobs(
        lm, prompts, replies)
    assert inputs == {devices.model_device(lm)}
    want = ScoringEngine(max_length=64, token_budget=200, progress=False).reference_logprobs(
        load_causal_lm(tiny_llama).eval(), prompts, replies)
    for g, w in zip(got, want):
        for x, y in zip(g, w):
            assert x.device.type == device.type
            torch.testing.assert_close(x.cpu(), y, atol=1e-4, rtol=1e-4)
    # the reward combination follows the KL's device
    scores = RewardModelScores.of([0.5, -1.0, 2.0] * 3, [1.0, 0.0, -3.0] * 3, [False] * 9)

    def padded(lps):
        flat = [x for g in lps for x in g]
        pad = torch.nn.utils.rnn.pad_sequence
        return pad(flat, batch_first=True), pad([torch.ones_like(x) for x in flat],
                                                batch_first=True)

    out = scores.ppo_rewards(*padded(got), 0.1)
    assert {t.device.type for t in out} == {device.type}
    for x, y in zip(out, scores.ppo_rewards(*padded(want), 0.1)):
        torch.testing.assert_close(x.cpu(), y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("on", DEVICES, indirect=True)
def test_policy_updates_train_on_the_compute_device(on, tiny_llama, tmp_path, monkeypatch):
    """Rejection-sampling fine-tuning and RRHF load the policy onto compute_device() and feed it
    tensors there; the saved checkpoints load on the CPU (and, on CUDA, match a CPU run)."""
    from flywheel.policy import finetune as finetune_module
    from flywheel.policy import rrhf as rrhf_module
    from flywheel.policy.finetune import finetune
    from flywheel.policy.rrhf import rrhf_finetune

    device, asked = on
    seen: list[set] = []

    def loading(path, dtype="float32", device=None):
        model = load_causal_lm(path, dtype, device)
        # the decoder: fine-tuning runs it through the model's forward, RRHF directly
        seen.append(_input_devices(model.get_decoder()))
        return model

    for module in (finetune_module, rrhf_module):  # each loads the policy through its own name
        monkeypatch.setattr(module, "load_causal_lm", loading)

    msgs = PAIRS[0].messages
    sft = RejectionSamplingConfig(learning_rate=3e-3, epochs=1, batch_size=2, micro_batch_size=1,
                                  max_length=64)
    finetune(tiny_llama, [(msgs, PAIRS[0].chosen), (msgs, PAIRS[0].rejected)], sft,
             tmp_path / "sft")
    rrhf = RRHFConfig(learning_rate=3e-3, epochs=1, batch_size=2, max_length=64)
    groups = [(p.messages, [p.chosen, p.rejected], [0.9, 0.1]) for p in PAIRS[:2]]
    rrhf_finetune(tiny_llama, groups, rrhf, tmp_path / "rrhf")
    assert asked == ["flywheel.policy.finetune", "flywheel.policy.rrhf"]
    assert [{d.type for d in s} for s in seen] == [{device.type}] * 2

    if device.type != "cpu":
        monkeypatch.setenv("FLYWHEEL_DEVICE", "cpu")
        finetune(tiny_llama, [(msgs, PAIRS[0].chosen), (msgs, PAIRS[0].rejected)], sft,
                 tmp_path / "sft-cpu")
        rrhf_finetune(tiny_llama, groups, rrhf, tmp_path / "rrhf-cpu")
        for name in ("sft", "rrhf"):
            _state_close(load_causal_lm(str(tmp_path / name)).state_dict(),
                         load_causal_lm(str(tmp_path / f"{name}-cpu")).state_dict(), device)


@pytest.mark.parametrize("on", DEVICES, indirect=True)
def test_judge_embeds_on_the_compute_device(on, minilm, monkeypatch):
    from flywheel.evaluation.proxy import ProxyJudge

    device, asked = on
    judge = ProxyJudge(minilm)
    assert asked == ["flywheel.evaluation.embedding"]
    assert devices.model_device(judge.model).type == device.type
    emb = judge.embed(["How do I cook rice?", "Boil it."])
    assert emb.device.type == device.type and judge.embed([]).device.type == device.type
    got = judge.judge(["How do I cook rice?"] * 2, ["helpfulness", "safety"],
                      ["Rinse the rice, add water and boil it.", "I cannot help with that."])
    monkeypatch.setenv("FLYWHEEL_DEVICE", "cpu")
    want = ProxyJudge(minilm).judge(["How do I cook rice?"] * 2, ["helpfulness", "safety"],
                                    ["Rinse the rice, add water and boil it.",
                                     "I cannot help with that."])
    for a, b in zip(got, want):
        assert (a.refused, a.safe) == (b.refused, b.safe)
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_plain_stepper_trains_where_the_caller_put_the_model():
    """make_stepper does not move a model: the caller places it (the reward-model loop on
    compute_device()), and Stepper.device says where the micro-batches go."""
    model = torch.nn.Linear(4, 1)
    stepper = make_stepper(model, 1e-3, 2, 1, 1)
    assert stepper.device == torch.device("cpu") == devices.model_device(model)
    if torch.cuda.is_available():
        model = torch.nn.Linear(4, 1).to("cuda")
        assert make_stepper(model, 1e-3, 2, 1, 1).device.type == "cuda"


def test_load_causal_lm_stays_on_the_cpu_unless_asked(tiny_llama):
    """HFSampler and the PPO stage place their models themselves: no device, no move."""
    assert devices.model_device(load_causal_lm(tiny_llama)) == torch.device("cpu")
    assert devices.model_device(load_causal_lm(tiny_llama, "float32", "cpu")) == \
        torch.device("cpu")
