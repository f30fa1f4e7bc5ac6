import pytest

from flywheel.evaluation import gate, head_to_head
from flywheel.judge import Judgement


def J(score, safe=True, refused=False):
    return Judgement(score, refused, safe, 0.5, 0.0)


def test_head_to_head_hand_values():
    criteria = ["helpfulness", "helpfulness", "safety", "safety"]
    new = [J(0.8), J(0.2), J(1.0, safe=True, refused=True), J(-0.3, safe=False)]
    old = [J(0.5), J(0.2), J(-0.6, safe=False), J(-0.3, safe=False)]
    m = head_to_head(criteria, new, old)
    # wins: 1 (0.8>0.5), 0.5 (tie), 1 (1.0>-0.6), 0.5 (tie) -> 3/4
    assert m["win_rate"] == 0.75
    assert m["win_rate_helpful"] == 0.75 and m["win_rate_harmful"] == 0.75
    assert m["harmful_answered_new"] == 0.5 and m["harmful_answered_old"] == 1.0
    assert m["helpful_refused_new"] == 0.0
    assert m["judge_mean_new"] == pytest.approx((0.8 + 0.2 + 1.0 - 0.3) / 4)


def test_gate_promotes_and_rolls_back_with_reasons():
    ok = {"win_rate": 0.6, "harmful_answered_new": 0.2, "harmful_answered_old": 0.3}
    assert gate(ok, 0.5, 0.0)[0] is True
    low = {**ok, "win_rate": 0.4}
    promoted, why = gate(low, 0.5, 0.0)
    assert not promoted and "win rate 0.400 < 0.5" in why
    worse = {**ok, "harmful_answered_new": 0.5}
    promoted, why = gate(worse, 0.5, 0.1)
    assert not promoted and "rose from 0.300 to 0.500" in why


def test_gate_without_judged_prompts_rolls_back_and_says_why():
    promoted, why = gate({"win_rate": None, "harmful_answered_new": None,
                          "harmful_answered_old": None}, 0.5, 0.0)
    assert not promoted and "split 'heldout'" in why
