"""How sure an evaluation is: percentile-bootstrap intervals, the win rate, AlpacaEval 2's
length-controlled win rate, and Bradley-Terry strengths on the Elo scale.

Points are a side's score per comparison: 1 a win, 0.5 a tie, 0 a loss (`Verdict.points_a`).
Every interval here is a percentile bootstrap, resampling items (prompts, games) with
replacement, seeded so the same data always gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ELO_SCALE = 400.0  # rating points per factor of 10 in the odds of winning
ELO_MEAN = 1000.0
LC_L2 = 1.0  # ridge on the length coefficient: a standard normal prior on phi
BT_PRIOR = 1.0  # virtual games each player ties against a reference player of fixed strength


def _quantiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _resamples(size: int, n: int, seed: int) -> np.ndarray:
    """n rows of `size` indices drawn with replacement: the same for the same seed."""
    return np.random.default_rng(seed).integers(0, size, size=(n, size))


def bootstrap_interval(values: Sequence[float], n: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (None under 2 values: one value
    says nothing about how far the mean could move)."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return None
    means = data[_resamples(data.size, n, seed)].mean(axis=1)
    return _quantiles(means, level)


def bootstrap(stat_fn: Callable[[Any], float | dict[str, float] | None], data: Sequence,
              n: int = 1000, seed: int = 0, level: float = 0.95
              ) -> tuple[float, float] | dict[str, tuple[float, float]] | None:
    """Percentile bootstrap interval of any statistic: `stat_fn` gets a resample of `data`
    (items drawn with replacement; a numpy array stays one, anything else becomes a list) and
    returns a number, or a dict of numbers (e.g. one rating per player), then the answer is
    one interval per key over the resamples that had that key. A resample whose statistic is
    None is skipped. None under 2 items."""
    if len(data) < 2:
        return None
    array = data if isinstance(data, np.ndarray) else None
    per_key: dict[str, list[float]] = {}
    scalar: list[float] = []
    for idx in _resamples(len(data), n, seed):
        value = stat_fn(array[idx] if array is not None else [data[i] for i in idx])
        if value is None:
            continue
        if isinstance(value, dict):
            for key, v in value.items():
                per_key.setdefault(key, []).append(v)
        else:
            scalar.append(value)
    if per_key:
        return {key: _quantiles(np.asarray(v), level) for key, v in per_key.items()}
    return _quantiles(np.asarray(scalar), level) if scalar else None


def win_rate(points: Sequence[float]) -> float | None:
    """The mean of the points: ties count half. None when nothing was compared."""
    return float(np.mean(points)) if len(points) else None


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _log1pexp(x):
    return np.logaddexp(0.0, x)


def length_controlled_win_rate(points: Sequence[float], len_a: Sequence[float],
                               len_b: Sequence[float], l2: float = LC_L2) -> float | None:
    """AlpacaEval 2's length-controlled win rate of a model (A) against a baseline (B) on the
    same instructions: the win rate the judge would give if both answers had the same length.

    The GLM: logit P(A beats B on i) = theta + phi * tanh((len_a_i - len_b_i) / sigma), sigma
    the standard deviation (n - 1) of the length differences, as AlpacaEval (not centred); the
    LC win rate is the fit with the length term at zero, sigmoid(theta). A tie is a soft label
    of 0.5, half a win and half a loss in the likelihood, as AlpacaEval weights it.

    Left out, for want of the data: AlpacaEval's instruction-difficulty term (fitted across
    hundreds of models), and its regularisation toward "gamed" verbose and concise baselines
    (with an L1 penalty chosen by cross-validation). Here a ridge `l2 * phi**2 / 2` (a normal
    prior of variance 1/l2 on phi) stops phi from running off to infinity when the wins
    separate by length on a small suite; theta is not penalised, so with no length differences
    the LC win rate equals the raw one exactly. When every difference is the same (sigma 0)
    length cannot be told apart from quality and the raw win rate is returned; so it is when
    every point is 1 (or every one 0), where theta has no finite maximum. None when empty.
    """
    y = np.asarray(points, dtype=float)
    if not (len(y) == len(len_a) == len(len_b)):
        raise ValueError(f"one length per point on each side; got {len(y)} points and "
                         f"{len(len_a)} and {len(len_b)} lengths")
    delta = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    if y.size == 0:
        return None
    raw = float(y.mean())
    sigma = float(delta.std(ddof=1)) if y.size > 1 else 0.0
    if sigma == 0.0 or raw in (0.0, 1.0):
        return raw
    x = np.column_stack([np.ones_like(delta), np.tanh(delta / sigma)])
    penalty = np.array([0.0, l2])

    def loss(beta):  # negative penalised log-likelihood with soft labels
        z = x @ beta
        return float(np.sum(_log1pexp(z) - y * z) + 0.5 * np.sum(penalty * beta ** 2))

    beta = np.array([math.log(raw / (1.0 - raw)), 0.0])
    current = loss(beta)
    for _ in range(100):  # Newton with step halving; the loss is convex
        p = _sigmoid(x @ beta)
        grad = x.T @ (p - y) + penalty * beta
        hess = (x.T * (p * (1.0 - p))) @ x + np.diag(penalty)
        step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        t = 1.0
        while loss(beta - t * step) > current and t > 1e-8:
            t /= 2.0
        beta = beta - t * step
        current = loss(beta)
        if np.max(np.abs(t * step)) < 1e-10:
            break
    return float(_sigmoid(beta[0]))


def bradley_terry(games: Sequence[tuple[str, str, float]], prior: float = BT_PRIOR,
                  anchor: tuple[str, float] | None = None) -> dict[str, float]:
    """Bradley-Terry strengths of the players in `games` ((player_a, player_b, points_a),
    points 1, 0.5 or 0), by maximum likelihood, on the Elo scale: a gap of 400 * log10(r)
    between two players means the first wins r times as often as the second. A tie is half a
    win each way. Ratings average 1000, or `anchor` = (player, rating) fixes one player's.

    `prior`: each player also plays that many virtual games, all ties, against a reference
    player of fixed strength, which keeps a player who always won (or always lost), or one
    that played nobody else's opponents, at a finite rating pulled toward the middle; one
    virtual game weighs little against the dozens to hundreds each policy plays. With
    `prior` 0 the estimate is the plain maximum likelihood, which exists only when every
    player both scored against and conceded to the rest, through some chain of games (the
    comparison graph is strongly connected, Hunter 2004); otherwise this raises ValueError.
    """
    players, ia, ib, pts = _encode(games)
    if np.any(ia == ib):
        raise ValueError("a game needs two different players")
    if np.any((pts < 0) | (pts > 1)):
        raise ValueError("points_a is 1 (a won), 0.5 (a tie) or 0 (b won)")
    if anchor is not None and anchor[0] not in players:
        raise ValueError(f"the anchor {anchor[0]!r} played no game")
    return _ratings(players, ia, ib, pts, prior, anchor)


def bradley_terry_intervals(games: Sequence[tuple[str, str, float]], n: int = 1000,
                            seed: int = 0, level: float = 0.95, prior: float = BT_PRIOR,
                            anchor: tuple[str, float] | None = None
                            ) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of `bradley_terry`'s ratings, resampling games. A player
    is rated over the resamples it played in; a resample with no finite fit (prior 0) or
    without the anchor is skipped. Empty under 2 games."""
    players, ia, ib, pts = _encode(games)

    def ratings(idx):
        used, inverse = np.unique(np.concatenate([ia[idx], ib[idx]]), return_inverse=True)
        names = [players[u] for u in used]
        if anchor is not None and anchor[0] not in names:
            return None
        if prior <= 0 and not _strongly_connected(len(used), inverse[:len(idx)],
                                                  inverse[len(idx):], pts[idx]):
            return None
        return _ratings(names, inverse[:len(idx)], inverse[len(idx):], pts[idx], prior, anchor)

    return bootstrap(ratings, np.arange(len(pts)), n=n, seed=seed, level=level) or {}


def _encode(games) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """The players, sorted, and each game as (index of a, index of b, a's points)."""
    players = sorted({p for a, b, _ in games for p in (a, b)})
    index = {p: i for i, p in enumerate(players)}
    ia = np.array([index[a] for a, _, _ in games], dtype=int)
    ib = np.array([index[b] for _, b, _ in games], dtype=int)
    return players, ia, ib, np.array([float(s) for _, _, s in games])


def _ratings(players: list[str], ia: np.ndarray, ib: np.ndarray, pts: np.ndarray,
             prior: float, anchor: tuple[str, float] | None) -> dict[str, float]:
    k = len(players)
    if k == 0:
        return {}
    if prior <= 0 and k > 1 and not _strongly_connected(k, ia, ib, pts):
        raise ValueError("no finite Bradley-Terry fit: some player never lost (or never won) "
                         "against the rest; pass prior > 0")
    games_ij = np.zeros((k, k))
    np.add.at(games_ij, (ia, ib), 1.0)
    games_ij = games_ij + games_ij.T
    points = np.bincount(ia, pts, k) + np.bincount(ib, 1.0 - pts, k) + 0.5 * prior
    ratings = ELO_SCALE / math.log(10.0) * _fit_log_strengths(games_ij, points, prior)
    if anchor is not None:
        ratings += anchor[1] - ratings[players.index(anchor[0])]
    else:
        ratings += ELO_MEAN - ratings.mean()
    return {p: float(r) for p, r in zip(players, ratings)}


def _fit_log_strengths(games_ij: np.ndarray, points: np.ndarray, prior: float) -> np.ndarray:
    """Newton on the concave log-likelihood of log-strengths beta; the reference player of the
    prior sits at beta 0. Without a prior the first player is held at 0 (strengths are only
    defined up to a common factor)."""
    k = len(points)
    free = slice(0, k) if prior > 0 else slice(1, k)
    beta = np.zeros(k)

    def loglik(b):
        pair = 0.5 * np.sum(games_ij * np.logaddexp(b[:, None], b[None, :]))
        return float(points @ b - pair - prior * np.sum(_log1pexp(b)))

    current = loglik(beta)
    for _ in range(200):
        p = _sigmoid(beta[:, None] - beta[None, :])  # P(i beats j)
        expected = np.sum(games_ij * p, axis=1) + prior * _sigmoid(beta)
        grad = points - expected
        w = games_ij * p * (1.0 - p)
        hess = np.diag(w.sum(axis=1) + prior * _sigmoid(beta) * (1.0 - _sigmoid(beta))) - w
        step = np.zeros(k)
        step[free] = np.linalg.solve(hess[free, free], grad[free])
        t = 1.0
        while loglik(beta + t * step) < current - 1e-12 and t > 1e-8:
            t /= 2.0
        beta = beta + t * step
        current = loglik(beta)
        if np.max(np.abs(t * step)) < 1e-10:
            break
    return beta


def _strongly_connected(k: int, ia: np.ndarray, ib: np.ndarray, pts: np.ndarray) -> bool:
    """Whether every player reaches every other along "scored against" edges (a tie scores
    both ways): the condition for a finite maximum-likelihood fit without a prior."""
    edges = [set() for _ in range(k)]
    back = [set() for _ in range(k)]
    for a, b, s in zip(ia.tolist(), ib.tolist(), pts.tolist()):
        if s > 0:
            edges[a].add(b)
            back[b].add(a)
        if s < 1:
            edges[b].add(a)
            back[a].add(b)

    def reaches_all(graph):
        seen, todo = {0}, [0]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return len(seen) == k

    return reaches_all(edges) and reaches_all(back)
