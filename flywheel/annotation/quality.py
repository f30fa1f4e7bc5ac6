"""Annotator quality, as Llama 2 ran it: agreement on items several annotators labelled (overlap)
and accuracy on gold items whose answer is known. Pure functions over `Rating`s; reading them
from the lake is flywheel/annotation/annotators.py.

A rating's `choice` is "first" or "second": which of the item's two responses was preferred, in
a fixed order of the item (not the order an annotator saw them in), so two annotators' choices
compare whatever their screens showed.

    Cohen's kappa     two raters, nominal: (p_o - p_e) / (1 - p_e), p_o the share of pairs
                      that agree, p_e = sum_k p1(k) p2(k) from each side's own label shares.
                      An annotator's is against the consensus of the others on each overlap
                      item (the other annotator when there is one; the majority choice of
                      several, the item left out where they tie), so one unreliable annotator
                      does not drag down everyone who labelled beside them.
    linear-weighted   the same with partial credit w(i, j) = 1 - |i - j| / (K - 1) between
    kappa             ordered levels: p_o = mean w, p_e = sum_ij p1(i) p2(j) w(i, j). Cohen's
                      kappa is this with w(i, j) = [i == j] (one implementation).
    strength          linear-weighted kappa on the signed 8-level scale SCALE (against the
    agreement         others' consensus: the lower median of their levels): the choice and
                      its strength together ("first, significantly better" ... "second,
                      significantly better"), so "a much better" against "b much better" is the
                      furthest apart, not an agreement on "much" (the four levels alone would
                      score it as one).
    Fleiss' kappa     several raters per item (a batch): P_i = (sum_j n_ij^2 - n_i) /
                      (n_i (n_i - 1)), p_j = sum_i n_ij / sum_i n_i, kappa = (mean P_i -
                      sum_j p_j^2) / (1 - sum_j p_j^2); items may have different numbers of
                      raters n_i >= 2 (the usual generalisation); with two raters per item it
                      is Scott's pi.
    gold accuracy     share of an annotator's gold ratings whose choice is the known one.
    unsure            share of ratings at the weakest level, "negligibly better / unsure".
    speed             median seconds per rating, from ratings that carry a time; None (n/a)
                      when none does.

A kappa is None where it is undefined: no pairs, or chance agreement of 1 (every label the same).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations, permutations

from flywheel.lake.schemas import STRENGTHS

CHOICES = ("first", "second")
UNSURE = STRENGTHS[-1]
# the signed scale: first response much better ... second response much better
SCALE = tuple(("first", s) for s in STRENGTHS) + tuple(("second", s) for s in reversed(STRENGTHS))


@dataclass(frozen=True)
class Rating:
    item: str  # what was labelled: the same pair for every annotator who got it
    annotator: str
    choice: str  # first | second
    strength: str | None
    criterion: str
    gold: str | None = None  # the known choice of a gold item (first | second), else None
    seconds: float | None = None  # time spent on it, when the tool reports it


# kappas --------------------------------------------------------------------------------------
def _kappa(pairs: Sequence[tuple], levels: Sequence, weight: Callable[[int, int], float]):
    """(p_o - p_e) / (1 - p_e) with agreement weights `weight(i, j)` between level indices."""
    if not pairs:
        return None
    index = {v: i for i, v in enumerate(levels)}
    n = len(pairs)
    first, second = Counter(index[a] for a, _ in pairs), Counter(index[b] for _, b in pairs)
    p_o = sum(weight(index[a], index[b]) for a, b in pairs) / n
    p_e = sum(first[i] * second[j] * weight(i, j) for i in first for j in second) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def cohen_kappa(pairs: Sequence[tuple[str, str]], levels: Sequence[str] = CHOICES):
    """Cohen's kappa of (rater 1's label, rater 2's label) pairs; None where undefined."""
    return _kappa(pairs, levels, lambda i, j: float(i == j))


def linear_weighted_kappa(pairs: Sequence[tuple], levels: Sequence):
    """Linear-weighted kappa over ordered `levels`; None where undefined."""
    top = len(levels) - 1
    return _kappa(pairs, levels, lambda i, j: 1.0 - abs(i - j) / top)


def fleiss_kappa(items: Iterable[Sequence[str]], levels: Sequence[str] = CHOICES):
    """Fleiss' kappa of each item's labels (items with under two labels are left out); None
    where undefined."""
    rows = [Counter(labels) for labels in items if len(labels) >= 2]
    if not rows:
        return None
    per_item = [(sum(c * c for c in row.values()) - sum(row.values()))
                / (sum(row.values()) * (sum(row.values()) - 1)) for row in rows]
    total = sum(sum(row.values()) for row in rows)
    p_e = sum((sum(row[k] for row in rows) / total) ** 2 for k in levels)
    if p_e >= 1.0:
        return None
    return (sum(per_item) / len(per_item) - p_e) / (1.0 - p_e)


# per annotator, per batch ------------------------------------------------------------------
def signed(r: Rating) -> tuple[str, str]:
    """The rating on the signed scale (a missing strength counts as the weakest)."""
    return r.choice, r.strength or UNSURE


def gold_accuracy(ratings: Iterable[Rating]):
    """Share of gold ratings with the known choice; None without gold ratings."""
    gold = [r.choice == r.gold for r in ratings if r.gold is not None]
    return sum(gold) / len(gold) if gold else None


def overlap_items(ratings: Iterable[Rating]) -> dict[str, list[Rating]]:
    """The non-gold items with ratings by two or more annotators (one rating each: the first)."""
    by_item: dict[str, dict[str, Rating]] = defaultdict(dict)
    for r in ratings:
        if r.gold is None:
            by_item[r.item].setdefault(r.annotator, r)
    return {k: list(v.values()) for k, v in by_item.items() if len(v) >= 2}


def against_consensus(items: list[list[Rating]], annotator: str) -> list[tuple[Rating, tuple]]:
    """(the annotator's rating, the others' consensus: (choice, signed level)) on each of its
    overlap items where the others' choice has a majority; the signed level is the lower
    median of the others' levels that made the majority."""
    out = []
    for rs in items:
        mine = [r for r in rs if r.annotator == annotator]
        others = [r for r in rs if r.annotator != annotator]
        counts = Counter(r.choice for r in others).most_common()
        if not mine or not others or (len(counts) > 1 and counts[0][1] == counts[1][1]):
            continue
        choice = counts[0][0]
        level = statistics.median_low(sorted(SCALE.index(signed(r)) for r in others
                                             if r.choice == choice))
        out.append((mine[0], (choice, SCALE[level])))
    return out


def annotator_report(ratings: Sequence[Rating]) -> list[dict]:
    """One row per annotator, by name: ratings, gold items and accuracy, overlap items (and
    how many had a consensus of the others to compare with), agreement with that consensus
    (raw on the choice, Cohen's kappa on the choice, linear-weighted kappa on the signed
    scale), share of unsure ratings, median seconds."""
    by_name: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_name[r.annotator].append(r)
    shared: dict[str, list[list[Rating]]] = defaultdict(list)  # annotator -> its overlap items
    for rs in overlap_items(ratings).values():
        for r in rs:
            shared[r.annotator].append(rs)
    out = []
    for name in sorted(by_name):
        mine, items = by_name[name], shared[name]
        compared = against_consensus(items, name)
        choice = [(r.choice, c) for r, (c, _) in compared]
        times = [r.seconds for r in mine if r.seconds is not None]
        out.append({
            "annotator": name,
            "ratings": len(mine),
            "gold": sum(r.gold is not None for r in mine),
            "gold_accuracy": gold_accuracy(mine),
            "overlap": len(items),
            "compared": len(compared),
            "agreement": (sum(a == b for a, b in choice) / len(choice)) if choice else None,
            "kappa": cohen_kappa(choice),
            "strength_kappa": linear_weighted_kappa(
                [(signed(r), level) for r, (_, level) in compared], SCALE),
            "unsure": sum(r.strength == UNSURE for r in mine) / len(mine),
            "median_seconds": statistics.median(times) if times else None,
        })
    return out


def batch_agreement(ratings: Sequence[Rating]) -> dict:
    """Agreement over the overlap items of a set of ratings, overall and by criterion: items,
    Fleiss' kappa on the choice, linear-weighted kappa on the signed scale (every ordered pair
    of an item's ratings, so both raters' label shares count alike)."""
    def measure(items: list[list[Rating]]) -> dict:
        pairs = [(signed(a), signed(b)) for rs in items for a, b in permutations(rs, 2)]
        agree = [a.choice == b.choice for rs in items for a, b in combinations(rs, 2)]
        return {"items": len(items),
                "agreement": sum(agree) / len(agree) if agree else None,
                "fleiss_kappa": fleiss_kappa([[r.choice for r in rs] for rs in items]),
                "strength_kappa": linear_weighted_kappa(pairs, SCALE)}

    items = list(overlap_items(ratings).values())
    by = {c: measure([rs for rs in items if rs[0].criterion == c])
          for c in sorted({rs[0].criterion for rs in items})}
    return {**measure(items), "by_criterion": by,
            "gold_accuracy": gold_accuracy(ratings)}


def below_threshold(report: list[dict], min_kappa: float | None,
                    min_gold_accuracy: float | None, min_items: int) -> dict[str, str]:
    """The annotators whose kappa or gold accuracy is under its threshold, with why. A measure
    on fewer than `min_items` items (overlap items compared with a consensus for the kappa,
    gold items for the accuracy) or undefined is not held against anyone."""
    out = {}
    for row in report:
        why = []
        if (min_kappa is not None and row["compared"] >= min_items and row["kappa"] is not None
                and row["kappa"] < min_kappa):
            why.append(f"kappa {row['kappa']:.2f} < {min_kappa} on {row['compared']} overlap "
                       "items")
        if (min_gold_accuracy is not None and row["gold"] >= min_items
                and row["gold_accuracy"] is not None and row["gold_accuracy"] < min_gold_accuracy):
            why.append(f"gold accuracy {row['gold_accuracy']:.2f} < {min_gold_accuracy} on "
                       f"{row['gold']} gold items")
        if why:
            out[row["annotator"]] = "; ".join(why)
    return out
