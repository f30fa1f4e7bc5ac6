"""PPO and RRHF arithmetic against hand-derived values, and PPO learning a verifiable reward on a
tiny model (with a mutation check: a flipped advantage sign must not learn it)."""

import math

import pytest
import torch

from flywheel.config import PPOConfig
from flywheel.distributed.ranks import World
from flywheel.kernels.reward_combine import combine_rewards_reference, token_rewards
from flywheel.policy import ppo as ppo_trainer
from flywheel.policy.ppo import ValueModel, deepspeed_engine_config, train_ppo
from flywheel.policy.ppo_losses import gae, policy_loss, value_loss, whiten
from flywheel.policy.rollouts import VLLMRollouts, _rollout_of
from flywheel.policy.rrhf import rrhf_loss
from flywheel.reward.combined import SAFETY_THRESHOLD, RewardModelScores


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_whiten_hand_values():
    out = whiten(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    s = math.sqrt(1.25)  # population variance of 1..4
    assert out.tolist() == pytest.approx([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], abs=1e-6)
    masked = whiten(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
    assert masked.tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)


def test_combined_reward_hand_values():
    # prompt 1: safety 0.9 >= 0.15, not tagged -> R_c = helpfulness 0.8 -> logit ln 4
    # prompt 2: safety 0.1 < 0.15 -> R_c = 0.1 -> logit -ln 9; two values whiten to +1 and -1
    r_help = torch.tensor([_logit(0.8), _logit(0.6)])
    r_safe = torch.tensor([_logit(0.9), _logit(0.1)])
    kl = torch.tensor([[0.1, 0.2], [0.3, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    score, seq, tok, _ = combine_rewards_reference(r_help, r_safe, torch.tensor([0, 0]), kl,
                                                   mask, 0.5, SAFETY_THRESHOLD)
    assert score.tolist() == pytest.approx([1.0, -1.0], abs=1e-5)
    assert seq.tolist() == pytest.approx([1 - 0.5 * 0.3, -1 - 0.5 * 0.3], abs=1e-5)
    expected = [[-0.05, -0.1 + 1.0], [-0.15 - 1.0, 0.0]]
    assert tok.tolist() == [pytest.approx(r, abs=1e-5) for r in expected]
    # the trainer's assembly from a score gives the same token rewards
    assert token_rewards(score, kl, mask, 0.5)[1].tolist() == \
        [pytest.approx(r, abs=1e-5) for r in expected]
    # a prompt tagged safety takes the safety score whatever its value
    tagged, _, _, _ = combine_rewards_reference(
        r_help, torch.tensor([_logit(0.9), _logit(0.7)]), torch.tensor([1, 1]), kl, mask, 0.0,
        SAFETY_THRESHOLD)
    assert tagged.tolist() == pytest.approx([1.0, -1.0], abs=1e-5)  # ln 9 > ln(7/3)


def test_gae_hand_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 7.0]])
    values = torch.full((2, 3), 0.5)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 1: delta = (0, 0, 0.5); A2 = 0.5, A1 = 0.95 * 0.5, A0 = 0.95^2 * 0.5
    assert adv[0].tolist() == pytest.approx([0.45125, 0.475, 0.5])
    assert ret[0].tolist() == pytest.approx([0.95125, 0.975, 1.0])
    # row 2 ends after two tokens: its third (reward 7) is not part of it
    # delta1 = 1 - 0.5 = 0.5; delta0 = 0 + 0.5 - 0.5 = 0; A0 = 0.95 * 0.5
    assert adv[1].tolist() == pytest.approx([0.475, 0.5, 0.0])
    adv_g, _ = gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=1.0)
    # lambda 1: A_t = discounted return - V; G = (0.81, 0.9, 1.0)
    assert adv_g[0].tolist() == pytest.approx([0.31, 0.4, 0.5])


def test_clipped_policy_loss_hand_values():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, st = policy_loss(logp, old, adv, torch.ones(1, 4), clip=0.2)
    # min(r A, clip(r) A): 1.2 (clipped), -1.5, 0.5, -0.8 (clipped); loss = -mean
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 0.5 - 0.8) / 4)
    assert st["clip_fraction"] == pytest.approx(0.5)
    # a masked token does not count
    loss_m, st_m = policy_loss(logp, old, adv, torch.tensor([[1, 0, 0, 0]]), clip=0.2)
    assert loss_m.item() == pytest.approx(-1.2) and st_m["clip_fraction"] == 1.0


def test_value_loss_hand_values():
    v = value_loss(torch.tensor([[1.5, 1.1]]), torch.tensor([[1.0, 1.0]]),
                       torch.tensor([[2.0, 1.0]]), torch.ones(1, 2), clip=0.2)
    # token 1: clipped to 1.2 -> max(0.25, 0.64); token 2: max(0.01, 0.01); 0.5 * mean
    assert v.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)


def test_rrhf_loss_hand_values():
    # length-normalised scores p = (-1, -2, -0.5); rewards rank 1 > 2 > 0
    loss, st = rrhf_loss(torch.tensor([-2.0, -8.0, -1.5]), torch.tensor([2, 4, 3]),
                             torch.tensor([1.0, 3.0, 2.0]))
    # pairs (worse, better): (0,1) max(0,-1+2)=1, (0,2) max(0,-1+0.5)=0, (2,1) max(0,-0.5+2)=1.5
    assert st["rank_loss"] == pytest.approx(2.5)
    assert st["ft_loss"] == pytest.approx(2.0)  # the best (index 1): NLL per token
    assert loss.item() == pytest.approx(4.5)


PROMPTS = ["How do I cook rice?", "Name a colour.", "What is two plus two?",
           "Say something kind.", "Where is Lisbon?", "Write one word.",
           "How are you today?", "Tell me about tea."]


def _learn(tiny_llama, steps=12, engine=None):
    from flywheel.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(tiny_llama)
    policy = load_causal_lm(tiny_llama, "float32")
    reference = load_causal_lm(tiny_llama, "float32")
    critic = ValueModel.from_causal_lm(policy)
    target = {i for i in range(len(tok)) if i % 4 == 0} - {tok.eos_token_id}

    def score(prompts, responses, response_ids):
        # verifiable: the share of the response's tokens in the target set
        return torch.tensor([sum(i in target for i in ids) / max(1, len(ids))
                             for ids in response_ids])

    # 32 rollouts of 4 tokens a step, 4 minibatches of 8 (one gradient step each); the share of
    # target tokens starts near 1/4 (a random model), reaches about 0.8 in 12 steps
    settings = PPOConfig(steps=steps, prompts_per_step=32, minibatch=8,
                             learning_rate=3e-3, critic_learning_rate=1e-3, beta=0.05,
                             max_new_tokens=4, eval_every=0)
    rollouts = None if engine is None else VLLMRollouts(engine, tok, engine.scratch)
    return train_ppo(policy, reference, critic, tok, PROMPTS, score, settings,
                         rollouts=rollouts)


def test_ppo_raises_a_verifiable_reward_within_a_kl_bound(tiny_llama):
    out = _learn(tiny_llama)
    rewards = [s["reward"] for s in out["steps"]]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.25, rewards
    assert all(s["kl"] < 8.0 for s in out["steps"]), [s["kl"] for s in out["steps"]]
    for key in ("reward", "kl", "entropy", "clip_fraction", "value_loss", "response_length"):
        assert all(math.isfinite(s[key]) for s in out["steps"]), key


def test_a_flipped_advantage_sign_does_not_learn(tiny_llama, monkeypatch):
    real = gae
    monkeypatch.setattr(ppo_trainer, "gae", lambda *a, **k: tuple(-x if i == 0 else x
                                                         for i, x in enumerate(real(*a, **k))))
    rewards = [s["reward"] for s in _learn(tiny_llama)["steps"]]
    assert sum(rewards[-3:]) / 3 < sum(rewards[:3]) / 3, rewards


def test_ppo_learns_from_vllm_rollouts_that_follow_the_updated_weights(tiny_llama, tmp_path):
    """The rollouts come from a vLLM engine that reloads the actor's weights after every
    update: the rollouts' reward can only rise if the engine samples the updated policy
    (with the reload disabled it stays near the random model's 1/4)."""
    pytest.importorskip("vllm")
    from flywheel.policy.sampling import VLLMSampler

    engine = VLLMSampler(tiny_llama, dtype="float32", max_model_len=256, weight_sync=True)
    engine.scratch = str(tmp_path / "weights")
    try:
        out = _learn(tiny_llama, engine=engine)
    finally:
        engine.close()
    rewards = [s["reward"] for s in out["steps"]]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.25, rewards
    assert all(s["kl"] < 8.0 for s in out["steps"]), [s["kl"] for s in out["steps"]]
    info = out["rollouts"]
    # no reload before the first rollout (the engine starts with the policy's weights), one
    # before each later one
    assert info["engine"] == "vllm" and info["reloads"] == len(rewards) - 1
    assert all(t > 0 for t in info["reload_seconds"])


def test_weekly_loop_token_rewards_come_from_one_kernel_pass():
    """The score function's two reward-model scores, the KL and the mask go through
    kernels.reward_combine once: the hand values of test_combined_reward_hand_values (R_c =
    [0.8, 0.1], scores [1, -1], token rewards [[-0.05, 0.9], [-1.15, 0]]), with R_c, not the
    whitened score, as the logged reward."""
    out = RewardModelScores.of([_logit(0.8), _logit(0.6)], [_logit(0.9), _logit(0.1)],
                               [False, False])
    kl = torch.tensor([[0.1, 0.2], [0.3, 0.0]])
    reward, tok = ppo_trainer._token_rewards(out, kl, torch.tensor([[1, 1], [1, 0]]), 0.5,
                                             World())
    assert reward.tolist() == pytest.approx([0.8, 0.1], abs=1e-6)
    assert tok.tolist() == [pytest.approx(r, abs=1e-5) for r in [[-0.05, 0.9], [-1.15, 0.0]]]


def _old_token_rewards(help_, safe, tags, kl, mask, beta):
    """The arithmetic PPO used before the trainer called the kernel, in float64: R_c by the
    scalar gate (math.exp sigmoids), LOGIT clamped to [1e-6, 1 - 1e-6], population whitening
    (eps 1e-8), then -beta * KL on each response token and the score on the last one."""
    def sig(x):
        return 1 / (1 + math.exp(-x))

    rc = [sig(s) if t or sig(s) < 0.15 else sig(h) for h, s, t in zip(help_, safe, tags)]
    x = [math.log(min(max(r, 1e-6), 1 - 1e-6) / (1 - min(max(r, 1e-6), 1 - 1e-6))) for r in rc]
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x) + 1e-8)
    score = [(v - mean) / std for v in x]
    tok = -beta * kl.double() * mask.double()
    for i, row in enumerate(mask.tolist()):
        if any(row):
            tok[i, max(j for j, m in enumerate(row) if m)] += score[i]
    return rc, tok


def test_the_kernel_pass_equals_the_old_reward_arithmetic():
    """31 responses with random scores (some tagged safety, some gated by a low safety
    score), ragged masks, one empty: the trainer's one kernel pass against the old arithmetic
    (max abs difference below 1e-5; measured 2.9e-7)."""
    torch.manual_seed(0)
    B, T = 31, 13
    help_, safe = (torch.randn(B) * 1.5).tolist(), (torch.randn(B) * 1.5).tolist()
    tags = (torch.rand(B) < 0.3).tolist()
    kl = torch.randn(B, T) * 0.2
    lengths = torch.randint(1, T + 1, (B,))
    lengths[5] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    assert any(t for t in tags) and any(
        not t and 1 / (1 + math.exp(-s)) < 0.15 for s, t in zip(safe, tags))
    reward, tok = ppo_trainer._token_rewards(RewardModelScores.of(help_, safe, tags),
                                             kl * mask, mask, 0.01, World())
    rc, want = _old_token_rewards(help_, safe, tags, kl, mask, 0.01)
    diff = max((tok.double() - want).abs().max().item(),
               (reward.double() - torch.tensor(rc)).abs().max().item())
    assert diff < 1e-5, diff
    assert tok[5].abs().sum() == 0  # no response token, no reward


def test_reference_logprobs_through_the_engine_equal_a_full_forward(tiny_llama):
    """PPO's frozen reference log-probs from ScoringEngine.reference_logprobs (each distinct
    prompt run once, head_logprobs on the hidden states) against the old path, a full forward
    over the left-padded rollout and token_logprobs on its logits: equal on every response
    token (max abs difference below 1e-4; measured 4.8e-7), 0 after each response's end."""
    from flywheel.models import load_causal_lm, load_tokenizer
    from flywheel.policy.rollouts import _prompt_ids
    from flywheel.reward.scoring import ScoringEngine

    torch.manual_seed(0)
    tok = load_tokenizer(tiny_llama)
    reference = load_causal_lm(tiny_llama, "float32").eval()
    prompts = PROMPTS[:3] * 2 + PROMPTS[3:5]  # 8 rollouts of 5 distinct prompts
    eos = tok.eos_token_id
    # sampled-like responses of 6 tokens, ended by the end token after 2 to 6 of them
    responses = [torch.randint(5, 200, (6,)).tolist() for _ in prompts]
    for r, end in zip(responses, [1, 3, 5, 6, 2, 4, 6, 1]):
        if end < 6:
            r[end - 1] = eos
    ro = _rollout_of(prompts, [_prompt_ids(tok, p) for p in prompts], responses,
                     tok.pad_token_id, eos)
    mask = ro.response_mask.float()
    assert mask.sum(-1).tolist() == [1, 3, 5, 6, 2, 4, 6, 1]
    engine = ScoringEngine(progress=False)
    got = ppo_trainer.reference_logprobs(engine, reference, ro)
    with torch.no_grad():
        want = ppo_trainer.response_logprobs(reference, ro)[0] * mask
    diff = (got - want).abs().max().item()
    assert diff < 1e-4, diff
    assert (got * (1 - mask)).abs().sum() == 0
    assert engine.stats.reused_groups == 5 and engine.stats.sequences == 8


def test_rollouts_from_token_ids_mask_after_the_end_token():
    ro = _rollout_of(["a", "b"], [[5, 6, 7], [8]], [[1, 2, 0, 3], [4]], pad=9, eos=0)
    assert ro.prompt_width == 3
    assert ro.input_ids.tolist() == [[5, 6, 7, 1, 2, 0, 9], [9, 9, 8, 4, 9, 9, 9]]
    assert ro.response_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert ro.attention.tolist() == [[1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0]]
    assert ro.response_ids() == [[1, 2, 0], [4]]
    assert ro.positions[1].tolist()[2:4] == [0, 1]


def test_deepspeed_actor_and_critic_take_the_same_steps_as_pytorch(tiny_llama):
    """ZeRO-2 (one process, on this CPU) for actor and critic: the same two PPO steps as plain
    PyTorch, update for update (AdamW 0.9/0.95, eps 1e-5, weight decay, clipping)."""
    pytest.importorskip("deepspeed")
    from flywheel.models import load_causal_lm, load_tokenizer

    def run(deepspeed):
        torch.manual_seed(0)
        tok = load_tokenizer(tiny_llama)
        policy = load_causal_lm(tiny_llama, "float32")
        reference = load_causal_lm(tiny_llama, "float32")
        critic = ValueModel.from_causal_lm(policy)
        settings = PPOConfig(steps=2, prompts_per_step=8, minibatch=4, learning_rate=1e-3,
                                 critic_learning_rate=1e-3, beta=0.05, max_new_tokens=4,
                                 eval_every=0, grad_clip=0.5, deepspeed=deepspeed)
        out = train_ppo(policy, reference, critic, tok, PROMPTS,
                            lambda p, r, ids: torch.tensor([len(i) / 4.0 for i in ids]),
                            settings)
        return out, policy, critic

    plain, p_policy, p_critic = run(None)
    ds, d_policy, d_critic = run("zero2-cpu")
    for a, b in zip(plain["steps"], ds["steps"]):
        for key in ("reward", "kl", "value_loss", "policy_loss", "clip_fraction"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    for (name, a), b in zip(p_policy.state_dict().items(), d_policy.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    moved = max((a - b).abs().max().item() for a, b in zip(
        p_critic.state_dict().values(), d_critic.state_dict().values()))
    assert moved < 1e-5
    # and training moved the weights at all
    from flywheel.models import load_causal_lm as fresh

    start = fresh(tiny_llama, "float32").state_dict()
    assert any(not torch.equal(start[k], v) for k, v in p_policy.state_dict().items())


def test_deepspeed_zero3_is_refused_for_ppo():
    from flywheel.errors import ConfigError

    with pytest.raises(ConfigError, match="stage 2 or lower"):
        deepspeed_engine_config("zero3", 1e-6, PPOConfig())


def test_a_batch_normalised_score_is_trained_on_but_the_reward_is_logged_and_compared(
        tiny_llama):
    """With (score, reward) from score_fn, the update uses the whitened score while the logs
    and the held-out early stopping use the reward: a whitened score's mean is 0 every time."""
    from flywheel.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(tiny_llama)
    policy = load_causal_lm(tiny_llama, "float32")
    reference = load_causal_lm(tiny_llama, "float32")
    critic = ValueModel.from_causal_lm(policy)
    target = {i for i in range(len(tok)) if i % 4 == 0}
    seen = []

    def score(prompts, responses, ids):
        reward = torch.tensor([sum(i in target for i in x) / max(1, len(x)) for x in ids])
        seen.append(reward.mean().item())
        return whiten(reward), reward

    settings = PPOConfig(steps=2, prompts_per_step=8, minibatch=4, learning_rate=1e-3,
                             max_new_tokens=4, eval_every=1, patience=5)
    out = train_ppo(policy, reference, critic, tok, PROMPTS, score, settings,
                        heldout=PROMPTS[:4])
    # calls: held-out at 0, step 1, held-out at 1, step 2, held-out at 2
    assert [e["heldout_reward"] for e in out["heldout"]] == pytest.approx(seen[0::2])
    assert [s["reward"] for s in out["steps"]] == pytest.approx(seen[1::2])
    assert any(abs(v) > 0.05 for v in seen)  # a whitened mean would be ~0 every time


@pytest.mark.parametrize("eval_every, evaluated", [(2, [0, 2, 3]), (0, [])])
def test_the_policy_kept_is_one_that_was_evaluated(tiny_llama, eval_every, evaluated):
    """Held-out scoring at the start, every eval_every steps and after the last step (3 here,
    not a multiple of 2), so the step reported kept is the policy returned; with eval_every 0,
    none, and the last step is kept."""
    from flywheel.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(tiny_llama)
    policy = load_causal_lm(tiny_llama, "float32")
    reference = load_causal_lm(tiny_llama, "float32")
    critic = ValueModel.from_causal_lm(policy)
    states = []

    def score(prompts, responses, ids):
        if len(prompts) == 4:  # a held-out evaluation: remember the weights it scored
            states.append({k: v.clone() for k, v in policy.state_dict().items()})
        return torch.tensor([sum(i % 4 == 0 for i in x) / max(1, len(x)) for x in ids])

    settings = PPOConfig(steps=3, prompts_per_step=8, minibatch=4, learning_rate=1e-3,
                             max_new_tokens=4, eval_every=eval_every, patience=5)
    out = train_ppo(policy, reference, critic, tok, PROMPTS, score, settings,
                        heldout=PROMPTS[:4])
    assert [e["step"] for e in out["heldout"]] == evaluated
    assert len(out["steps"]) == 3
    if not evaluated:
        assert out["best_step"] == 3
        return
    best = max(out["heldout"], key=lambda e: e["heldout_reward"])  # the first of equals
    assert out["best_step"] == best["step"]
    kept = states[evaluated.index(out["best_step"])]
    assert all(torch.equal(v, kept[k]) for k, v in policy.state_dict().items())
