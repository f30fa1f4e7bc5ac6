"""Annotator quality measures (flywheel/annotation/quality.py) against values worked out by hand."""

import pytest

from flywheel.annotation.quality import (
    SCALE,
    Rating,
    against_consensus,
    annotator_report,
    batch_agreement,
    below_threshold,
    cohen_kappa,
    fleiss_kappa,
    gold_accuracy,
    linear_weighted_kappa,
)

F, S = "first", "second"
# the 2x2 table of two raters on 10 items:        rater 2: first  second
#                                     rater 1: first        4      1
#                                              second       2      3
TABLE = [(F, F)] * 4 + [(F, S)] + [(S, F)] * 2 + [(S, S)] * 3


def test_cohen_kappa_on_a_2x2_table():
    """p_o = (4 + 3) / 10 = 0.7; rater 1 says first 5/10, rater 2 6/10, so
    p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 and kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4."""
    assert cohen_kappa(TABLE) == pytest.approx(0.4)
    # the raters swapped: the same table transposed, the same kappa
    assert cohen_kappa([(b, a) for a, b in TABLE]) == pytest.approx(0.4)


def test_cohen_kappa_is_none_where_undefined():
    """No pairs, or both raters always saying first: p_e = 1, kappa 0/0."""
    assert cohen_kappa([]) is None
    assert cohen_kappa([(F, F)] * 3) is None


def test_fleiss_kappa_on_a_small_matrix():
    """4 items, 3 raters each, counts (first, second): (3, 0), (2, 1), (1, 2), (0, 3).
    P_i = (sum n_ij^2 - 3) / (3 * 2): (9 - 3)/6 = 1, (4 + 1 - 3)/6 = 1/3, 1/3, 1; mean 2/3.
    p_first = (3 + 2 + 1 + 0) / 12 = 0.5, so P_e = 0.25 + 0.25 = 0.5 and
    kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3."""
    items = [[F, F, F], [F, F, S], [F, S, S], [S, S, S]]
    assert fleiss_kappa(items) == pytest.approx(1 / 3)


def test_fleiss_kappa_matches_the_published_example():
    """Fleiss (1971) as worked in Wikipedia's "Fleiss' kappa": 10 subjects, 14 raters, 5
    categories; P-bar = 0.378, P_e = 0.213, kappa = 0.210."""
    counts = [(0, 0, 0, 0, 14), (0, 2, 6, 4, 2), (0, 0, 3, 5, 6), (0, 3, 9, 2, 0),
              (2, 2, 8, 1, 1), (7, 7, 0, 0, 0), (3, 2, 6, 3, 0), (2, 5, 3, 2, 2),
              (6, 5, 2, 1, 0), (0, 2, 2, 3, 7)]
    levels = "12345"
    items = [[c for c, n in zip(levels, row) for _ in range(n)] for row in counts]
    assert fleiss_kappa(items, levels) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_with_two_raters_is_scotts_pi():
    """The 2x2 table as items of two labels: p_o = 0.7; pooled shares first (5 + 6)/20 = 0.55,
    second 0.45, P_e = 0.55^2 + 0.45^2 = 0.505; pi = (0.7 - 0.505) / 0.495 = 0.39394."""
    assert fleiss_kappa([list(p) for p in TABLE]) == pytest.approx(0.195 / 0.495)


def test_linear_weighted_kappa_by_hand():
    """Levels low < mid < high, weights 1, 0.5, 0 by distance. Pairs (low, low), (low, mid),
    (mid, mid), (high, mid): p_o = (1 + 0.5 + 1 + 0.5) / 4 = 0.75. Rater 1: low 0.5, mid 0.25,
    high 0.25; rater 2: low 0.25, mid 0.75. p_e = 0.5 (0.25 + 0.75 * 0.5) + 0.25 (0.25 * 0.5 +
    0.75) + 0.25 (0.75 * 0.5) = 0.3125 + 0.21875 + 0.09375 = 0.625;
    kappa = (0.75 - 0.625) / 0.375 = 1/3."""
    pairs = [("low", "low"), ("low", "mid"), ("mid", "mid"), ("high", "mid")]
    assert linear_weighted_kappa(pairs, ["low", "mid", "high"]) == pytest.approx(1 / 3)
    # with identity weights (Cohen's) the same pairs agree only twice: p_o = 0.5,
    # p_e = 0.5 * 0.25 + 0.25 * 0.75 = 0.3125, kappa = 0.1875 / 0.6875 = 0.27273
    assert cohen_kappa(pairs, ["low", "mid", "high"]) == pytest.approx(0.1875 / 0.6875)


def test_the_signed_scale_puts_opposite_choices_furthest_apart():
    """On the 8-level scale, first-significantly against second-significantly are 7 apart
    (weight 0): a rater pair that always disagrees like that has p_o = 0."""
    assert SCALE[0] == (F, "significantly_better") and SCALE[-1] == (S, "significantly_better")
    pairs = [(SCALE[0], SCALE[-1]), (SCALE[-1], SCALE[0])]
    # p_e = 2 * (0.5 * 0.5 * 0) + 2 * (0.5 * 0.5 * 1) = 0.5; kappa = (0 - 0.5) / 0.5 = -1
    assert linear_weighted_kappa(pairs, SCALE) == pytest.approx(-1.0)


def _r(item, who, choice, strength="better", criterion="helpfulness", gold=None, seconds=None):
    return Rating(item, who, choice, strength, criterion, gold, seconds)


def test_gold_accuracy():
    """4 gold ratings, 3 with the known choice: 0.75; non-gold ratings do not count."""
    ratings = [_r("g1", "x", F, gold=F), _r("g2", "x", S, gold=S), _r("g3", "x", F, gold=S),
               _r("g4", "x", S, gold=S), _r("p1", "x", F)]
    assert gold_accuracy(ratings) == pytest.approx(0.75)
    assert gold_accuracy([_r("p1", "x", F)]) is None


def test_annotator_report_by_hand():
    """Annotators a and b rate 10 items as TABLE (a first): each one's kappa against the other
    is 0.4, raw agreement 0.7. a marks 2 of its 11 ratings unsure and took 4, 6 and 10 seconds on
    three (median 6); b carries no times (n/a). a's gold item is right, b's wrong."""
    ratings = []
    for i, (x, y) in enumerate(TABLE):
        ratings.append(_r(f"p{i}", "a", x, "negligibly_better" if i < 2 else "better",
                          seconds=(4, 6, 10)[i] if i < 3 else None))
        ratings.append(_r(f"p{i}", "b", y))
    ratings += [_r("g", "a", F, gold=F), _r("g", "b", S, gold=F), _r("solo", "b", F)]
    report = {row["annotator"]: row for row in annotator_report(ratings)}
    a, b = report["a"], report["b"]
    assert a["kappa"] == pytest.approx(0.4) and b["kappa"] == pytest.approx(0.4)
    assert a["agreement"] == pytest.approx(0.7)
    assert (a["overlap"], b["overlap"], a["ratings"], b["ratings"]) == (10, 10, 11, 12)
    assert a["compared"] == b["compared"] == 10  # one other annotator: the consensus
    assert a["unsure"] == pytest.approx(2 / 11) and b["unsure"] == 0
    assert a["median_seconds"] == 6 and b["median_seconds"] is None
    assert (a["gold"], a["gold_accuracy"], b["gold_accuracy"]) == (1, 1.0, 0.0)


def test_batch_agreement_by_criterion():
    """Helpfulness items agree ((F, F), (S, S)): P_i = 1, p_e = 0.5, Fleiss 1. Safety items
    disagree ((F, S), (S, F)): P_i = 0, kappa (0 - 0.5) / 0.5 = -1. All four: P-bar 0.5,
    p_e 0.5, kappa 0."""
    ratings = []
    for i, (x, y, c) in enumerate([(F, F, "helpfulness"), (S, S, "helpfulness"),
                                   (F, S, "safety"), (S, F, "safety")]):
        ratings += [_r(f"p{i}", "a", x, criterion=c), _r(f"p{i}", "b", y, criterion=c)]
    out = batch_agreement(ratings)
    assert out["items"] == 4 and out["fleiss_kappa"] == pytest.approx(0.0)
    assert out["by_criterion"]["helpfulness"]["fleiss_kappa"] == pytest.approx(1.0)
    assert out["by_criterion"]["safety"]["fleiss_kappa"] == pytest.approx(-1.0)
    assert out["agreement"] == pytest.approx(0.5)


def test_below_threshold_needs_enough_items():
    report = [
        {"annotator": "good", "compared": 20, "kappa": 0.8, "gold": 10, "gold_accuracy": 0.9},
        {"annotator": "noisy", "compared": 20, "kappa": 0.1, "gold": 10, "gold_accuracy": 0.5},
        {"annotator": "new", "compared": 2, "kappa": -1.0, "gold": 1, "gold_accuracy": 0.0},
    ]
    out = below_threshold(report, min_kappa=0.4, min_gold_accuracy=0.7, min_items=5)
    assert list(out) == ["noisy"]
    assert "kappa 0.10 < 0.4 on 20 overlap items" in out["noisy"]
    assert "gold accuracy 0.50 < 0.7" in out["noisy"]
    assert below_threshold(report, None, None, 5) == {}


def test_each_annotator_is_measured_against_the_others_consensus():
    """g1 and g2 agree on 4 items (F, F, S, S), bad always picks the other. bad against the
    consensus (g1 and g2 agree): p_o = 0, both sides half F, p_e = 0.5, kappa -1. For g1 the
    others (g2, bad) tie on every item: nothing to compare, so no kappa, and a threshold
    cannot leave g1 out for bad's sake."""
    ratings = []
    for i, c in enumerate([F, F, S, S]):
        ratings += [_r(f"p{i}", "g1", c), _r(f"p{i}", "g2", c),
                    _r(f"p{i}", "bad", S if c == F else F)]
    rows = {r["annotator"]: r for r in annotator_report(ratings)}
    assert (rows["bad"]["compared"], rows["bad"]["agreement"]) == (4, 0.0)
    assert rows["bad"]["kappa"] == pytest.approx(-1.0)
    assert (rows["g1"]["overlap"], rows["g1"]["compared"], rows["g1"]["kappa"]) == (4, 0, None)
    assert list(below_threshold(list(rows.values()), 0.2, None, 4)) == ["bad"]


def test_the_consensus_strength_is_the_lower_median_of_the_majority():
    """Others: x first/better (level 1), y first/slightly better (2), z second: the majority
    is first, its levels [1, 2], lower median 1: (first, better)."""
    item = [_r("p", "me", F, "significantly_better"), _r("p", "x", F, "better"),
            _r("p", "y", F, "slightly_better"), _r("p", "z", S, "better")]
    ((mine, consensus),) = against_consensus([item], "me")
    assert mine.annotator == "me" and consensus == (F, (F, "better"))
