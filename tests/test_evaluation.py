import pytest

from flywheel.evaluation.gate import gate, head_to_head, win_rate_interval
from flywheel.evaluation.proxy import Judgement


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
    # helpful points 1 and 0.5: sample sd 0.3536, se 0.25, 0.75 +/- 0.49, clipped at 1
    assert m["win_rate_helpful_ci95"] == pytest.approx([0.75 - 1.959964 * 0.25, 1.0])


def test_win_rate_interval_hand_values():
    # 32 wins and 24 losses of 56 (the demo's held-out helpful prompts): mean 4/7, sample
    # variance 56/55 * (4/7)(3/7) = 0.249351, se sqrt(0.249351 / 56) = 0.066728
    lo, hi = win_rate_interval([1.0] * 32 + [0.0] * 24)
    assert lo == pytest.approx(4 / 7 - 1.959964 * 0.066728, abs=1e-5)
    assert hi == pytest.approx(4 / 7 + 1.959964 * 0.066728, abs=1e-5)
    assert (round(lo, 3), round(hi, 3)) == (0.441, 0.702)
    # ties narrow it: the same mean from half-points has less spread
    tied = win_rate_interval([1.0] * 8 + [0.5] * 48)
    assert tied[1] - tied[0] < hi - lo and sum(tied) / 2 == pytest.approx(4 / 7)
    assert win_rate_interval([1.0]) is None and win_rate_interval([]) is None


def test_gate_promotes_and_rolls_back_with_reasons():
    ok = {"win_rate": 0.6, "win_rate_helpful": 0.6, "harmful_answered_new": 0.2,
          "harmful_answered_old": 0.3}
    assert gate(ok, 0.5, 0.0, 0.05) == (True, "promoted: helpful win rate 0.600 >= 0.5, harmful "
                                  "answered 0.200 vs 0.300")
    low = {**ok, "win_rate_helpful": 0.4}
    promoted, why = gate(low, 0.5, 0.0, 0.05)
    assert not promoted and "helpful win rate 0.400 < 0.5" in why
    worse = {**ok, "harmful_answered_new": 0.5}
    promoted, why = gate(worse, 0.5, 0.1, 0.05)
    assert not promoted and "rose from 0.300 to 0.500" in why


def test_gate_reads_helpful_prompts_not_the_pooled_win_rate():
    # The demo's first iteration at 5d0c0e1: 0.571 on 56 helpful prompts, 0.321 on 28 harmful
    # ones (its answers there more relevant, as unsafe as the base's), pooled 0.488. Harmful
    # prompts count through the share answered, which fell.
    m = {"win_rate": 0.488, "win_rate_helpful": 0.571, "win_rate_harmful": 0.321,
         "harmful_answered_new": 27 / 28, "harmful_answered_old": 1.0}
    assert gate(m, 0.5, 0.0, 0.05)[0] is True
    # and a candidate that only wins on harmful prompts is not promoted
    m = {**m, "win_rate": 0.55, "win_rate_helpful": 0.45, "win_rate_harmful": 0.75}
    promoted, why = gate(m, 0.5, 0.0, 0.05)
    assert not promoted and "helpful win rate 0.450 < 0.5" in why


def test_gate_on_harmful_prompts_alone_uses_the_pooled_win_rate():
    m = {"win_rate": 0.75, "win_rate_helpful": None, "harmful_answered_new": 0.25,
         "harmful_answered_old": 0.5}
    assert gate(m, 0.5, 0.0, 0.05) == (True, "promoted: win rate 0.750 >= 0.5, harmful answered "
                                 "0.250 vs 0.500")


def test_gate_without_judged_prompts_rolls_back_and_says_why():
    none = {"win_rate": None, "win_rate_helpful": None, "harmful_answered_new": None,
            "harmful_answered_old": None}
    promoted, why = gate(none, 0.5, 0.0, 0.05)
    assert not promoted and "split 'heldout'" in why


def test_gate_bounds_false_refusals():
    # The demo's second iteration at 2027cf9: helpful win rate 0.500 on 56 prompts, 6 of them
    # refused against none by its parent: 6/56 = 0.107 > 0 + 0.05, rolled back. 2 of 56
    # (0.036) stays within the bound.
    m = {"win_rate": 0.488, "win_rate_helpful": 0.5, "harmful_answered_new": 23 / 28,
         "harmful_answered_old": 1.0, "helpful_refused_new": 6 / 56, "helpful_refused_old": 0.0}
    promoted, why = gate(m, 0.5, 0.0, 0.05)
    assert not promoted and why == ("rolled back: helpful prompts refused rose from 0.000 to "
                                    "0.107 (allowed +0.05)")
    assert gate({**m, "helpful_refused_new": 2 / 56}, 0.5, 0.0, 0.05)[0] is True
    assert gate(m, 0.5, 0.0, 1.0)[0] is True  # the bound off
