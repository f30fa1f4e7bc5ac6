"""The scoring engine against the plain paths it replaces: the same scores as `RewardModel.score`
(whole padded sequences), the same reference log-probs as a full forward with log-softmax, with
the prompt run once per group where the backbone allows it."""

from __future__ import annotations

import math

import pytest
import torch

from flywheel.policy.finetune import tokenize_sft
from flywheel.reward.combined import RewardModelScores, gated_reward, gated_rewards
from flywheel.reward.model import RewardModel
from flywheel.reward.scoring import Group, ScoringEngine, supports_prefix_reuse
from flywheel.stages.scores import group_samples

PROMPTS = ["How do I cook rice on the stove?", "Tell me how to steal a car without the keys.",
           "Suggest three things to see in Lisbon, please, with a short reason for each one."]
REPLIES = ["Rinse the rice, add water, boil, then simmer.", "I cannot help with that.",
           "The castle, the tram and the river front.", "Sorry.",
           "To write a short email, start with a greeting, state your point, and close politely."]


def _groups(k: int, n: int = 3) -> list[Group]:
    return [Group([{"role": "user", "content": PROMPTS[g % len(PROMPTS)] * (g + 1)}],
                  [REPLIES[(g + j) % len(REPLIES)] * (1 + j % 3) for j in range(k + g % 2)],
                  safety=g % 2 == 1)
            for g in range(n)]


@pytest.fixture(scope="module")
def llama_rm(tiny_llama):
    torch.manual_seed(1)
    rm = RewardModel.from_backbone(tiny_llama).eval()
    torch.nn.init.normal_(rm.head.weight)
    torch.nn.init.normal_(rm.head.bias)
    return rm


def _plain(rm, groups, max_length):
    flat = rm.score([g.messages for g in groups for _ in g.responses],
                    [r for g in groups for r in g.responses], max_length)
    out, i = [], 0
    for g in groups:
        out.append(flat[i: i + len(g.responses)])
        i += len(g.responses)
    return out


def _close(a, b, tol=1e-4):
    assert [len(x) for x in a] == [len(x) for x in b]
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=tol, rel=tol)


def test_prefix_reuse_gives_the_plain_scores_with_fewer_tokens(llama_rm):
    groups = _groups(k=4)
    engine = ScoringEngine(max_length=512, token_budget=1500, progress=False)
    assert supports_prefix_reuse(llama_rm.backbone)
    got = engine.rewards(llama_rm, groups)
    _close(got, _plain(llama_rm, groups, 512))
    st = engine.stats
    assert st.reused_groups == len(groups) and st.whole_rows == 0
    assert st.sequences == sum(len(g.responses) for g in groups)

    # long prompts, short replies: the backbone runs each prompt once, not K times
    long = [Group([{"role": "user", "content": p * 3}], REPLIES[:4]) for p in PROMPTS]
    engine = ScoringEngine(max_length=512, progress=False)
    _close(engine.rewards(llama_rm, long), _plain(llama_rm, long, 512))
    assert engine.stats.computed_tokens < 0.6 * engine.stats.tokens


def test_a_saved_reward_model_still_reuses_its_prompts(llama_rm, tmp_path):
    # a saved backbone's config names its base class (LlamaModel), not ...ForCausalLM
    llama_rm.save(tmp_path / "rm", {"kind": "helpfulness"})
    again = RewardModel.load(str(tmp_path / "rm"))
    assert "ForCausalLM" not in "".join(again.backbone.config.architectures or [])
    groups = _groups(k=3)
    engine = ScoringEngine(512, progress=False)
    _close(engine.rewards(again, groups), _plain(llama_rm, groups, 512))
    assert engine.stats.reused_groups == len(groups)


def test_budget_splits_and_single_rows_give_the_same_scores(llama_rm):
    groups = _groups(k=3, n=4) + [Group([{"role": "user", "content": "Hi"}], ["Hello."])]
    want = _plain(llama_rm, groups, 512)
    for budget in (1, 64, 100_000):  # one group per pass ... everything in one pass
        _close(ScoringEngine(512, token_budget=budget, progress=False).rewards(llama_rm, groups),
               want)


def test_truncated_rows_are_scored_whole_like_the_plain_path(llama_rm):
    groups = _groups(k=3)
    engine = ScoringEngine(max_length=40, progress=False)
    got = engine.rewards(llama_rm, groups)
    _close(got, _plain(llama_rm, groups, 40))
    assert engine.stats.whole_rows > 0


def test_deferred_norm_matches_and_is_restored(llama_rm):
    groups = _groups(k=2)
    norm = llama_rm.backbone.norm
    fused = ScoringEngine(512, fuse_norm=True, progress=False).rewards(llama_rm, groups)
    plain = ScoringEngine(512, fuse_norm=False, progress=False).rewards(llama_rm, groups)
    _close(fused, plain)
    assert llama_rm.backbone.norm is norm


def test_encoder_backbone_is_scored_whole(minilm):
    torch.manual_seed(0)
    rm = RewardModel.from_backbone(minilm).eval()
    torch.nn.init.normal_(rm.head.weight)
    groups = _groups(k=3)
    engine = ScoringEngine(max_length=64, token_budget=200, progress=False)
    assert not supports_prefix_reuse(rm.backbone)
    _close(engine.rewards(rm, groups), _plain(rm, groups, 64))
    assert engine.stats.reused_groups == 0
    assert engine.stats.whole_rows == sum(len(g.responses) for g in groups)


def test_reference_logprobs_match_a_full_forward(tiny_llama):
    """Token ids in (as PPO's rollouts give them), each group's prompt run once for its
    responses: the log-probs of a full forward with log-softmax, token for token; an empty
    response gets an empty tensor."""
    from flywheel.models import load_causal_lm, load_tokenizer

    lm, tok = load_causal_lm(tiny_llama).eval(), load_tokenizer(tiny_llama)
    groups = _groups(k=3)
    prompts, responses = [], []
    for grp in groups:
        encoded = [tokenize_sft(tok, grp.messages, r, 512) for r in grp.responses]
        p = len([x for x in encoded[0][1] if x == -100])
        prompts.append(encoded[0][0][:p])
        responses.append([ids[p:] for ids, _ in encoded])
    responses[1].append([])
    engine = ScoringEngine(max_length=512, token_budget=300, progress=False)
    got = engine.reference_logprobs(lm, prompts, responses)
    assert got[1][-1].shape == (0,)
    for g, (p, rs) in enumerate(zip(prompts, responses)):
        for k, r in enumerate(rs[: len(groups[g].responses)]):
            ids = p + r
            with torch.no_grad():
                logits = lm(torch.tensor([ids])).logits[0, :-1].float()
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            want = want[len(p) - 1:]
            assert got[g][k].shape == want.shape == (len(r),)
            torch.testing.assert_close(got[g][k], want, atol=1e-4, rtol=1e-4)
    assert engine.stats.reused_groups == len(groups)
    assert engine.stats.sequences == sum(len(g.responses) for g in groups)  # not the empty one


def test_gated_rewards_pick_by_the_safety_gate():
    """sigmoid(-3) = 0.0474 < 0.15: the safety score decides; sigmoid(1) = 0.731 >= 0.15: the
    helpfulness score sigmoid(2) = 0.8808; a prompt tagged safety takes sigmoid(1) whatever
    its value. Computed in float64, as Python's math gives them."""
    got = gated_rewards([2.0, 2.0, 2.0], [-3.0, 1.0, 1.0], [False, False, True])
    assert got == pytest.approx([1 / (1 + math.exp(3)), 1 / (1 + math.exp(-2)),
                                 1 / (1 + math.exp(-1))], abs=1e-15)
    assert gated_reward(2.0, -3.0, False) == got[0]


def test_ppo_rewards_whiten_the_logit_of_what_the_gate_picks():
    groups = [Group([{"role": "user", "content": "q"}], ["a", "b", "c"], safety=s)
              for s in (False, True)]
    help_ = [2.0, -1.0, 0.5, 3.0, 0.0, -2.0]
    safe = [-3.0, 1.0, 1.0, -1.0, 2.0, 0.5]
    tags = [g.safety for g in groups for _ in g.responses]
    scores = RewardModelScores.of(help_, safe, tags)
    score, seq, tok, r_c = scores.ppo_rewards(torch.zeros(6, 1), torch.ones(6, 1), 0.1)
    rc = gated_rewards(help_, safe, tags)
    torch.testing.assert_close(r_c, torch.tensor(rc, dtype=torch.float32))
    x = torch.tensor([math.log(r / (1 - r)) for r in rc])
    torch.testing.assert_close(score, (x - x.mean()) / x.std(unbiased=False), atol=1e-4,
                               rtol=1e-4)
    torch.testing.assert_close(seq, score)  # no KL
    torch.testing.assert_close(tok[:, 0], score)  # the one token carries the score
    assert score[:3].argmax() == torch.tensor(rc[:3]).argmax()
    assert score[3:].argmax() == torch.tensor(rc[3:]).argmax()
    # group 1's first reply: safety score sigmoid(-3) < 0.15 gates it to the safety model
    assert rc[0] == pytest.approx(1 / (1 + math.exp(3)))


def test_ppo_rewards_subtract_the_kl_per_token():
    scores = RewardModelScores.of([1.0, -1.0], [1.0, 1.0], [False, False])
    kl = torch.tensor([[0.5, 0.5, 1.0], [2.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    score, seq, tok, _ = scores.ppo_rewards(kl, mask, 0.1)
    torch.testing.assert_close(seq, score - 0.1 * torch.tensor([2.0, 2.0]))
    assert tok[0].tolist() == pytest.approx([-0.05, -0.05, -0.1 + score[0].item()])
    assert tok[1].tolist() == pytest.approx([-0.2 + score[1].item(), 0.0, 0.0])


def test_group_samples_keeps_each_row_findable():
    prompts = {p: {"messages": f'[{{"role": "user", "content": "{p}"}}]',
                   "criterion": "safety" if p == "b" else "helpfulness"} for p in "ab"}
    rows = [{"prompt_id": p, "text": t} for p, t in
            [("a", "a0"), ("b", "b0"), ("a", "a1"), ("b", "b1"), ("a", "a2")]]
    groups, where = group_samples(rows, prompts)
    assert [g.responses for g in groups] == [["a0", "a1", "a2"], ["b0", "b1"]]
    assert [g.safety for g in groups] == [False, True]
    assert [groups[g].responses[k] for g, k in where] == [r["text"] for r in rows]
