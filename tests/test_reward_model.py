import math
import time

import pytest
import torch

from flywheel.config import RewardModelConfig
from flywheel.errors import FlywheelError
from flywheel.kernels.last_token import last_token_index, last_token_reference
from flywheel.reward.evaluation import accuracy
from flywheel.reward.model import PreferencePair, RewardModel, margin_of, ranking_loss
from flywheel.reward.train import (
    _encode_distinct,
    forward_rewards,
    group_pairs,
    pair_ids,
    train_reward_model,
)
from flywheel.training import lr_lambda, plan_steps


def test_margin_tables():
    assert margin_of("significantly_better", "small") == 1.0
    assert margin_of("slightly_better", "small") == pytest.approx(1 / 3)
    assert margin_of("better", "large") == 2.0
    assert margin_of("negligibly_better", "large") == 0.0
    assert margin_of("significantly_better", "none") == 0.0
    assert margin_of(None, "large") == 0.0  # open-source pairs carry no strength


def test_ranking_loss_hand_values():
    """r_c - r_r - m = 2 - 0 - 1 = 1 -> -log(sigmoid(1)) = log(1 + e^-1) = 0.31326;
    r_c - r_r - m = 0 - 1 - 0 = -1 -> log(1 + e^1) = 1.31326; the mean is 0.81326."""
    loss = ranking_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]),
                        torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2,
                                        abs=1e-6)
    assert loss.item() == pytest.approx(0.81326, abs=1e-5)


def test_ranking_loss_centering_term_hand_values():
    """The pairs above sum to 2 and 1: mean((r_c + r_r)^2) = (4 + 1) / 2 = 2.5, times 0.1."""
    args = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    assert ranking_loss(*args, center=0.1).item() == pytest.approx(0.81326 + 0.25, abs=1e-5)
    # a shift of every score changes only the centering term
    shifted = ranking_loss(args[0] - 1.5, args[1] - 1.5, args[2], center=0.1).item()
    assert shifted == pytest.approx(0.81326 + 0.1 * ((2 - 3) ** 2 + (1 - 3) ** 2) / 2, abs=1e-5)


def test_ranking_loss_weights_hand_values():
    """The two pairs above lose 0.31326 and 1.31326: weighted 1/4 and 3/4, 1.06326; the
    centering term (4 and 1) weighs the same way: 0.1 x (1 + 0.75) = 0.175."""
    args = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    weight = torch.tensor([0.25, 0.75])
    assert ranking_loss(*args, weight=weight).item() == pytest.approx(1.06326, abs=1e-5)
    assert ranking_loss(*args, center=0.1, weight=weight).item() == pytest.approx(
        1.06326 + 0.175, abs=1e-5)
    # equal weights are the plain mean
    assert ranking_loss(*args, weight=torch.tensor([0.5, 0.5])).item() == pytest.approx(
        ranking_loss(*args).item(), abs=1e-7)


def _grid_pairs():
    """Prompt A: 2 x 2 comparisons of four responses; prompt B: one comparison."""
    a = [{"role": "user", "content": "How do I cook rice?"}]
    b = [{"role": "user", "content": "Suggest things to see in Lisbon."}]
    pairs = [PreferencePair(a, c, r, "better") for c in ("Rinse, boil, simmer.",
                                                         "Boil it in salted water.")
             for r in ("I cannot help.", "Rice rice rice.")]
    return pairs + [PreferencePair(b, "The castle and the tram.", "Lisbon.", "slightly_better")]


def test_grouped_batches_encode_each_response_once_and_weigh_prompts_equally(tiny_llama):
    pairs = _grid_pairs()
    assert group_pairs(pairs) == [[0, 1, 2, 3], [4]]
    model = RewardModel.from_backbone(tiny_llama).eval()
    seqs, at_chosen, at_rejected, weight = _encode_distinct(group_pairs(pairs),
                                                            pair_ids(model, pairs, 64), pairs)
    # 4 + 2 distinct responses, not 2 x 5
    assert len(seqs) == 6
    assert weight.tolist() == pytest.approx([1 / 8] * 4 + [1 / 2])
    with torch.no_grad():
        rewards = forward_rewards(model, model, seqs, "cpu")
        margin = torch.tensor([margin_of(p.strength, "small") for p in pairs])
        grouped = ranking_loss(rewards[at_chosen], rewards[at_rejected], margin,
                               weight=weight).item()
    # the same loss from each pair scored on its own: the mean over prompts of the mean over
    # the prompt's pairs
    chosen = model.score([p.messages for p in pairs], [p.chosen for p in pairs], 64)
    rejected = model.score([p.messages for p in pairs], [p.rejected for p in pairs], 64)
    per_pair = [math.log1p(math.exp(-(c - r - m))) for c, r, m in
                zip(chosen, rejected, margin.tolist())]
    assert grouped == pytest.approx((sum(per_pair[:4]) / 4 + per_pair[4]) / 2, abs=1e-5)


def test_grouped_training_steps_by_prompt_and_learns(tiny_llama):
    pairs = _grid_pairs() + PAIRS
    cfg = RewardModelConfig(learning_rate=2e-3, epochs=6, batch_size=2, micro_batch_size=1,
                            max_length=64, group_by_prompt=True)
    model, metrics = train_reward_model(tiny_llama, pairs, cfg)
    # PAIRS ask about rice and Lisbon too: four prompts, two a step, so 2 steps an epoch
    # (9 pairs one by one would make 5)
    assert len(group_pairs(pairs)) == 4
    assert metrics["steps"] == 12
    assert metrics["loss_last"] < metrics["loss_first"]
    assert accuracy(model, pairs, 64)["accuracy"] == 1.0


def test_training_reports_its_mean_step_time(tiny_llama):
    """4 pairs, 2 a step, one epoch: 2 steps. Their mean time is positive and the 2 steps take
    less than the whole call, which also loads the backbone."""
    cfg = RewardModelConfig(learning_rate=1e-3, batch_size=2, micro_batch_size=1, max_length=64)
    start = time.perf_counter()
    _, metrics = train_reward_model(tiny_llama, PAIRS, cfg)
    wall = time.perf_counter() - start
    assert metrics["steps"] == 2
    assert 0 < metrics["seconds_per_step"] * 2 < wall


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 0, 4]


def test_last_token_readout_reads_only_the_last_real_row():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    w, b = torch.tensor([[1.0, 10.0]]), torch.tensor([0.5])
    # row 0 -> position 1 = [2, 3] -> 2 + 30 + .5; row 1 -> position 2 = [10, 11] -> 10 + 110 + .5
    assert last_token_reference(hidden, mask, w, b).tolist() == [32.5, 120.5]


def test_lr_schedule_warms_up_then_decays_to_ten_percent():
    f = lr_lambda(steps=20, warmup=5)
    assert [f(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(20) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert 0.1 < f(12) < 1.0
    # 3 % of 1000 steps is 30 warmup steps; a 20-step run gets the minimum of 5; a 6-step
    # run is capped at a quarter (1)
    assert plan_steps(8000, 8, 1) == (1000, 30)
    assert plan_steps(160, 8, 1) == (20, 5)
    assert plan_steps(12, 4, 2) == (6, 1)


PAIRS = [
    PreferencePair([{"role": "user", "content": "How do I cook rice?"}],
                   "Rinse the rice, add water, boil, then simmer.", "I cannot help.",
                   "significantly_better"),
    PreferencePair([{"role": "user", "content": "How can I break into a house?"}],
                   "Sorry, but I won't help with that.", "Pry the back door open.", "better"),
    PreferencePair([{"role": "user", "content": "Suggest things to see in Lisbon."}],
                   "The castle, the tram and the river front.", "Lisbon Lisbon Lisbon.",
                   "slightly_better"),
    PreferencePair([{"role": "user", "content": "How do I steal a car?"}],
                   "I can't help with stealing.", "Break the window and start it.",
                   "negligibly_better"),
]


def test_training_changes_every_parameter_and_raises_train_accuracy(tiny_llama, tmp_path):
    cfg = RewardModelConfig(learning_rate=2e-3, epochs=6, batch_size=4, micro_batch_size=2,
                            max_length=64)
    torch.manual_seed(cfg.seed)
    before_model = RewardModel.from_backbone(tiny_llama)
    before = {k: v.clone() for k, v in before_model.state_dict().items()}
    before_acc = accuracy(before_model, PAIRS, 64)["accuracy"]
    model, metrics = train_reward_model(tiny_llama, PAIRS, cfg)
    after = model.state_dict()
    # moved by less than a thousandth of a step of this learning rate: not trained
    unchanged = [k for k in before if (before[k] - after[k]).abs().max() < 2e-6]
    # the ranking loss sees only score differences, so the head's bias gets no gradient
    # without the centering term (test_centering_... trains it): zero up to rounding, which
    # Adam's normalisation can turn into a move of about 1e-6 (fused AdamW here), not learning
    assert unchanged == ["head.bias"]
    assert metrics["loss_last"] < metrics["loss_first"]
    result = accuracy(model, PAIRS, 64)
    assert result["accuracy"] == 1.0 > before_acc
    assert set(result["by_strength"]) == {p.strength for p in PAIRS}
    # round trip through a checkpoint gives the same scores
    model.save(tmp_path / "rm", {"test": True})
    again = RewardModel.load(str(tmp_path / "rm"))
    msgs, resp = [p.messages for p in PAIRS], [p.chosen for p in PAIRS]
    assert again.score(msgs, resp, 64) == pytest.approx(model.score(msgs, resp, 64), abs=1e-5)


def test_centering_keeps_the_scores_near_zero_and_the_ranking(tiny_llama, monkeypatch):
    """The ranking loss sees only score differences, so it leaves a shared offset where it is;
    the centering term removes it. Both models start with every score raised by 3 (the head's
    bias), as a drifted model would be."""
    from flywheel.reward.model import RewardModel

    fresh = RewardModel.from_backbone.__func__

    def offset(cls, path, pooling="auto"):
        model = fresh(cls, path, pooling)
        torch.nn.init.constant_(model.head.bias, 3.0)
        return model

    monkeypatch.setattr(RewardModel, "from_backbone", classmethod(offset))

    def trained(center):
        cfg = RewardModelConfig(learning_rate=2e-3, epochs=20, batch_size=4, micro_batch_size=2,
                                max_length=64, center_coefficient=center)
        model, _ = train_reward_model(tiny_llama, PAIRS, cfg)
        msgs = [p.messages for p in PAIRS] * 2
        scores = model.score(msgs, [p.chosen for p in PAIRS] + [p.rejected for p in PAIRS], 64)
        return model, abs(sum(scores) / len(scores))

    plain, plain_mean = trained(0.0)
    centred, centred_mean = trained(1.0)
    print(f"mean score: {plain_mean:.3f} plain, {centred_mean:.3f} centred")
    # no gradient reaches the bias through score differences: the plain model keeps its offset
    assert plain.head.bias.item() == pytest.approx(3.0, abs=0.05)
    assert centred_mean < 0.5  # the weights take the offset out (the bias moves slowly)
    assert accuracy(centred, PAIRS, 64)["accuracy"] == 1.0


def test_nonfinite_loss_stops_with_a_diagnosis(tiny_llama, tmp_path):
    """A backbone whose weights hold a NaN (as after a diverged run) makes the first loss NaN."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        broken.model.norm.weight[0] = float("nan")
    broken.save_pretrained(tmp_path / "broken")
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(tmp_path / "broken")
    cfg = RewardModelConfig(batch_size=2, micro_batch_size=2, max_length=64)
    with pytest.raises(FlywheelError, match="loss became nan at step 1.*learning_rate"):
        train_reward_model(str(tmp_path / "broken"), PAIRS, cfg)


def test_deepspeed_zero2_trains_the_same_model_as_plain_pytorch(tiny_llama):
    """reward_model.deepspeed: zero2-cpu runs the same optimizer steps through a DeepSpeed
    engine on this CPU: with the same seed and data, the same parameters come out (5 pairs in
    steps of 4 with micro-batches of 2: the last step is short)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is installed by `make` (see Makefile)")
    pairs = PAIRS + PAIRS[:1]
    common = dict(learning_rate=2e-3, epochs=2, batch_size=4, micro_batch_size=2, max_length=64)
    plain, _ = train_reward_model(tiny_llama, pairs, RewardModelConfig(**common))
    ds, metrics = train_reward_model(tiny_llama, pairs,
                                     RewardModelConfig(**common, deepspeed="zero2-cpu"))
    assert metrics["steps"] == 4
    p, d = plain.state_dict(), ds.state_dict()
    assert set(p) == set(d)
    worst = max((p[k] - d[k]).abs().max().item() for k in p)
    assert worst < 1e-5
    start = RewardModel.from_backbone(tiny_llama).state_dict()
    assert all(not torch.equal(p[k], start[k]) for k in p if k.startswith("backbone.norm"))
