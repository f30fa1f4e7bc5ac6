"""The evaluation statistics against values worked out by hand."""

import math

import numpy as np
import pytest

from flywheel.evaluation.stats import (
    bootstrap,
    bootstrap_interval,
    bradley_terry,
    length_controlled_win_rate,
    win_rate,
)

ELO_3 = 400 * math.log10(3)  # 190.85: the gap between players whose strengths differ 3 to 1
ELO_2 = 400 * math.log10(2)  # 120.41


def test_win_rate_counts_ties_half():
    """(1 + 0.5 + 0 + 1) / 4 = 0.625."""
    assert win_rate([1, 0.5, 0, 1]) == 0.625
    assert win_rate([]) is None


def test_bootstrap_interval_of_two_values():
    """Resamples of [0, 1] have mean 0, 0.5 or 1 with chances 1/4, 1/2, 1/4: the 2.5 % and
    97.5 % quantiles fall in the outer masses (0, 1); the 30 % and 70 % ones in the middle."""
    assert bootstrap_interval([0, 1]) == (0.0, 1.0)
    assert bootstrap_interval([0, 1], level=0.4) == (0.5, 0.5)


def test_bootstrap_interval_contains_the_mean_narrows_and_repeats():
    values = [1, 1, 0, 0.5, 1, 0, 1, 1, 0.5, 0]
    lo, hi = bootstrap_interval(values)
    assert lo < np.mean(values) < hi
    lo4, hi4 = bootstrap_interval(values * 4)  # four times the data: about half as wide
    assert hi4 - lo4 < 0.7 * (hi - lo)
    scores = [0.1 * i ** 1.5 for i in range(12)]  # distinct values: the seed shows
    assert bootstrap_interval(scores, seed=3) == bootstrap_interval(scores, seed=3)
    assert bootstrap_interval(scores, seed=3) != bootstrap_interval(scores, seed=4)
    assert bootstrap_interval([1.0]) is None and bootstrap_interval([]) is None


def test_general_bootstrap_draws_the_same_resamples():
    """The general bootstrap of the mean equals the vectorised one: same seed, same draws."""
    values = [1, 0, 0.5, 1, 1, 0, 1]
    lo, hi = bootstrap(lambda d: float(np.mean(d)), values, n=300, seed=5)
    assert (lo, hi) == pytest.approx(bootstrap_interval(values, n=300, seed=5))
    per_key = bootstrap(lambda d: {"mean": float(np.mean(d)), "max": float(max(d))}, values)
    assert per_key["max"] == (1.0, 1.0)
    assert per_key["mean"] == pytest.approx(bootstrap_interval(values))
    assert bootstrap(np.mean, [1.0]) is None


def test_lc_without_length_differences_is_the_raw_win_rate():
    """tanh(0) = 0, so only theta is fitted: its maximum is logit(0.625), sigmoid of which is
    the raw rate."""
    assert length_controlled_win_rate([1, 0.5, 0, 1], [5] * 4, [5] * 4) == pytest.approx(0.625)
    assert length_controlled_win_rate([], [], []) is None
    assert length_controlled_win_rate([1, 1], [9, 3], [1, 1]) == 1.0  # no finite theta


def test_lc_of_a_two_length_design_by_hand():
    """Two length differences only (+10 on 6 items, -10 on 2): with no penalty the fit is
    saturated, sigmoid(theta +- phi t) equals each group's win rate, so
    theta = (logit p+ + logit p-) / 2 whatever t is. Longer answers win 4 of 6 (logit ln 2),
    shorter 1 of 2 (logit 0): theta = ln(sqrt 2), LC = sqrt2 / (1 + sqrt2) = 0.5858, under the
    raw 5/8 = 0.625 that the longer answers inflate. Ties count half: 2 wins and 2 ties of 6
    (mean 2/3 again) and 2 ties of 2 give the same."""
    expected = math.sqrt(2) / (1 + math.sqrt(2))
    len_a, len_b = [20] * 6 + [10] * 2, [10] * 6 + [20] * 2
    points = [1, 1, 1, 1, 0, 0, 1, 0]
    assert length_controlled_win_rate(points, len_a, len_b, l2=0) == pytest.approx(expected)
    ties = [1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert length_controlled_win_rate(ties, len_a, len_b, l2=0) == pytest.approx(expected)


def test_lc_discounts_wins_that_come_with_length():
    """Of 8 answers, 5 are longer than the baseline's. A model that wins 3 of them, and only
    longer ones, scores under its raw rate 3/8; one that wins the 3 shorter ones, over it."""
    len_a, len_b = [30, 25, 40, 35, 28, 5, 6, 4], [10] * 8
    assert length_controlled_win_rate([1, 1, 1, 0, 0, 0, 0, 0], len_a, len_b) < 0.375
    assert length_controlled_win_rate([0, 0, 0, 0, 0, 1, 1, 1], len_a, len_b) > 0.375


def test_lc_matches_a_grid_search_of_the_same_likelihood():
    """A second implementation: the penalised log-likelihood maximised over a grid of
    (theta, phi), 0.002 apart; its sigmoid(theta) agrees to the grid's resolution."""
    rng = np.random.default_rng(1)
    len_a, len_b = rng.integers(100, 500, 40), rng.integers(50, 300, 40)
    points = np.where(rng.random(40) < 0.1 + 0.8 * (len_a > len_b), 1.0, 0.0)
    points[:5] = 0.5
    x = np.tanh((len_a - len_b) / np.std(len_a - len_b, ddof=1))

    def argmax(thetas, phis):
        theta, phi = np.meshgrid(thetas, phis, indexing="ij")
        z = theta[..., None] + phi[..., None] * x
        loglik = np.sum(points * z - np.logaddexp(0, z), axis=-1) - 0.5 * 1.0 * phi ** 2
        best = np.unravel_index(np.argmax(loglik), loglik.shape)
        return theta[best], phi[best]

    theta, phi = argmax(np.arange(-3, 3, 0.05), np.arange(-5, 5, 0.05))
    theta, _ = argmax(np.arange(theta - 0.05, theta + 0.05, 0.001),
                      np.arange(phi - 0.05, phi + 0.05, 0.001))
    grid_lc = 1 / (1 + math.exp(-theta))
    assert length_controlled_win_rate(points, len_a, len_b, l2=1.0) == pytest.approx(
        grid_lc, abs=5e-4)
    assert win_rate(points) - grid_lc > 0.05  # the length term matters here


def test_lc_needs_one_length_per_point():
    with pytest.raises(ValueError, match="one length per point"):
        length_controlled_win_rate([1, 0], [1], [1, 2])


def test_bradley_terry_two_players():
    """A wins 3 of 4 against B: the likelihood p^3 (1 - p) peaks at p = 3/4, odds 3, strengths
    3 : 1, so A - B = 400 log10 3 = 190.85, around a mean of 1000. Two wins and two ties is
    the same 3 points to 1."""
    ratings = bradley_terry([("A", "B", 1)] * 3 + [("A", "B", 0)], prior=0)
    assert ratings["A"] - ratings["B"] == pytest.approx(ELO_3)
    assert ratings["A"] == pytest.approx(1000 + ELO_3 / 2)
    ties = bradley_terry([("A", "B", 1), ("B", "A", 0.5), ("A", "B", 0.5), ("B", "A", 0)],
                         prior=0)
    assert ties["A"] - ties["B"] == pytest.approx(ELO_3)


def test_bradley_terry_three_players_by_hand():
    """A beats B 2 of 3, B beats C 2 of 3, A beats C 4 of 5: strengths 4 : 2 : 1 meet every
    score equation (points = expected points): A 2 + 4 = 3*4/6 + 5*4/5 = 6, B 1 + 2 =
    3*2/6 + 3*2/3 = 3, C 1 + 1 = 3*1/3 + 5*1/5 = 2. So the ratings are 1000 +- 400 log10 2
    around B; anchored, C sits where asked. A cycle of single wins rates all three alike."""
    games = ([("A", "B", 1)] * 2 + [("A", "B", 0)] + [("B", "C", 1)] * 2 + [("C", "B", 1)]
             + [("A", "C", 1)] * 4 + [("A", "C", 0)])
    ratings = bradley_terry(games, prior=0)
    assert ratings == pytest.approx({"A": 1000 + ELO_2, "B": 1000.0, "C": 1000 - ELO_2})
    anchored = bradley_terry(games, prior=0, anchor=("C", 800.0))
    assert anchored == pytest.approx({"A": 800 + 2 * ELO_2, "B": 800 + ELO_2, "C": 800.0})
    cycle = bradley_terry([("A", "B", 1), ("B", "C", 1), ("C", "A", 1)], prior=0)
    assert cycle == pytest.approx({"A": 1000.0, "B": 1000.0, "C": 1000.0})


def _mm_with_reference(games, prior, iterations=20000):
    """Hunter's (2004) MM iteration, a second implementation: the prior's virtual tied games
    are real games against a reference player held at strength 1."""
    players = sorted({p for a, b, _ in games for p in (a, b)})
    pi = {p: 1.0 for p in players}
    points = {p: 0.5 * prior for p in players}
    for a, b, s in games:
        points[a] += s
        points[b] += 1 - s
    for _ in range(iterations):
        pi = {p: points[p] / (sum(1 / (pi[a] + pi[b]) for a, b, _ in games if p in (a, b))
                              + prior / (pi[p] + 1)) for p in players}
    ratings = {p: 400 * math.log10(v) for p, v in pi.items()}
    mean = sum(ratings.values()) / len(ratings)
    return {p: r - mean + 1000 for p, r in ratings.items()}


def test_bradley_terry_prior_keeps_perfect_records_finite():
    """A player who always won has no finite plain maximum-likelihood rating; with the prior's
    virtual tied games it is finite, and agrees with the MM iteration run on the same games
    plus a real reference player. A pair that played nobody else is rated too."""
    with pytest.raises(ValueError, match="pass prior > 0"):
        bradley_terry([("A", "B", 1)] * 3, prior=0)
    games = [("A", "B", 1)] * 3 + [("B", "C", 1), ("C", "B", 0.5), ("D", "E", 1)]
    ratings = bradley_terry(games, prior=1.0)
    assert ratings["A"] > ratings["B"] > ratings["C"] and ratings["D"] > ratings["E"]
    assert ratings == pytest.approx(_mm_with_reference(games, 1.0), abs=1e-4)


def test_bradley_terry_rejects_bad_games():
    with pytest.raises(ValueError, match="two different players"):
        bradley_terry([("A", "A", 1)])
    with pytest.raises(ValueError, match="points_a"):
        bradley_terry([("A", "B", 2)])
    with pytest.raises(ValueError, match="anchor"):
        bradley_terry([("A", "B", 1)], anchor=("Z", 1000))
    assert bradley_terry([]) == {}
