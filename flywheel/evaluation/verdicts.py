"""What every judge takes and gives: a `Pair` of answers to one prompt, and a `Verdict`.

A judge that reads both answers at once (an LLM) is asked twice, once in each order, since LLM
judges prefer the first position; a pair whose verdict flips with the order counts as a tie
(`from_orders`). A judge that scores each answer alone (the proxy, a reward model) cannot depend
on the order and decides by score (`by_score`).
"""

from __future__ import annotations

from dataclasses import dataclass

WINNERS = ("a", "b", "tie")


@dataclass(frozen=True)
class Pair:
    """Two answers to one conversation. `prompt` holds the user turns in order (one for a
    single-turn suite, two for MT-bench); `a` and `b` hold each side's answer to every turn."""

    prompt: tuple[str, ...]
    a: tuple[str, ...]
    b: tuple[str, ...]
    criterion: str = "helpfulness"
    reference: tuple[str, ...] | None = None  # reference answers (MT-bench math, coding)

    def __post_init__(self):
        for name in ("prompt", "a", "b"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        if not (len(self.prompt) == len(self.a) == len(self.b)) or not self.prompt:
            raise ValueError(f"a pair needs one answer per user turn on both sides; got "
                             f"{len(self.prompt)} turns, {len(self.a)} and {len(self.b)} answers")

    def swapped(self) -> Pair:
        return Pair(self.prompt, self.b, self.a, self.criterion, self.reference)


@dataclass(frozen=True)
class Verdict:
    """Which side won: "a", "b" or "tie". `flipped`: the two orders disagreed (so "tie")."""

    winner: str
    flipped: bool = False
    score_a: float | None = None
    score_b: float | None = None

    def __post_init__(self):
        if self.winner not in WINNERS:
            raise ValueError(f"a verdict is one of {WINNERS}; got {self.winner!r}")

    @property
    def points_a(self) -> float:
        """A's points in a win rate: 1 for a win, 0.5 for a tie, 0 for a loss."""
        return {"a": 1.0, "tie": 0.5, "b": 0.0}[self.winner]


def by_score(score_a: float, score_b: float) -> Verdict:
    winner = "a" if score_a > score_b else "b" if score_b > score_a else "tie"
    return Verdict(winner, False, float(score_a), float(score_b))


def from_orders(first: str, second: str) -> Verdict:
    """One verdict from a pair judged in both orders. `first` is the verdict with A shown
    first; `second` the verdict with the two swapped (B shown first), in the swapped labels, so
    a consistent judge that prefers A answers "a" then "b". A verdict that changes with the order
    is a tie, flagged `flipped`; a tie in one order and a win in the other is a tie, unflagged."""
    for v in (first, second):
        if v not in WINNERS:
            raise ValueError(f"a verdict is one of {WINNERS}; got {v!r}")
    unswapped = {"a": "b", "b": "a", "tie": "tie"}[second]
    if first == unswapped:
        return Verdict(first)
    if "tie" in (first, unswapped):
        return Verdict("tie")
    return Verdict("tie", flipped=True)
