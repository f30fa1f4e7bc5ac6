"""Every policy in the lake on one scale: a Bradley-Terry (Elo-scale) leaderboard over all the
judged pairs in the `evaluations` table, with bootstrap intervals.

Each judged row is one game between the row's policy and its opponent (verdict a: the policy
won, b: the opponent did, tie). A candidate meets its parent each iteration, so the games form
a chain through the loop's history; Bradley-Terry puts policies that never met on one scale
through the ones in between, which a table of head-to-head win rates cannot. Games by
different judges measure different things: pass `judge` to keep one judge's.

A rerun of an evaluation judges the same games again: of the rows with the same judge, suite,
prompt and pair of policies (in either order), only the latest run's count.
"""

from __future__ import annotations

from flywheel.evaluation.stats import BT_PRIOR, bradley_terry, bradley_terry_intervals
from flywheel.evaluation.verdicts import Verdict
from flywheel.lake import catalog
from flywheel.lake.store import Lake
from flywheel.stages.charts import intervals_svg


def games(lake: Lake, judge: str | None = None, suite: str | None = None
          ) -> list[tuple[str, str, float]]:
    """(policy, opponent, the policy's points) of every judged row against an opponent, in a
    fixed order (so a seeded bootstrap repeats). A game judged by several runs (an evaluation
    rerun, or the same two policies evaluated the other way round) counts once: the rows of
    the latest run (by `created_at`, then `run_id`) with that judge, suite, prompt and pair."""
    where = ["against_id IS NOT NULL", "verdict IS NOT NULL"]
    params = {}
    if judge is not None:
        where.append("judge = $judge")
        params["judge"] = judge
    if suite is not None:
        where.append("suite = $suite")
        params["suite"] = suite
    game = ("judge, suite, prompt, least(policy_id, against_id), "
            "greatest(policy_id, against_id)")
    rows = catalog.query(
        lake, "SELECT policy_id, against_id, verdict FROM evaluations WHERE "
        + " AND ".join(where)
        + f" QUALIFY run_id = first_value(run_id) OVER (PARTITION BY {game} "
        "ORDER BY created_at DESC, run_id DESC) ORDER BY id", params or None)
    return [(r["policy_id"], r["against_id"], Verdict(r["verdict"]).points_a) for r in rows]


def leaderboard(lake: Lake, judge: str | None = None, suite: str | None = None,
                n: int = 1000, seed: int = 0, prior: float = BT_PRIOR) -> list[dict]:
    """One row per policy that played, best first: rank, policy, iteration (None for a policy
    the lake does not list), rating, lo and hi (the 95 % percentile-bootstrap interval over
    resampled games; None when there was only one game), games, wins, ties, losses and
    win_rate (ties half). `prior`: `bradley_terry`'s virtual tied games per policy."""
    played = games(lake, judge, suite)
    if not played:
        return []
    ratings = bradley_terry(played, prior=prior)
    intervals = bradley_terry_intervals(played, n=n, seed=seed, prior=prior)
    record: dict[str, list[int]] = {p: [0, 0, 0] for p in ratings}  # wins, ties, losses
    for a, b, points in played:
        slot = {1.0: 0, 0.5: 1, 0.0: 2}[points]
        record[a][slot] += 1
        record[b][2 - slot] += 1
    iteration = {p["id"]: p["iteration"] for p in catalog.query(
        lake, "SELECT id, iteration FROM policies WHERE id IN (SELECT unnest($ids))",
        {"ids": list(ratings)})}
    order = sorted(ratings, key=lambda p: (-ratings[p], p))
    rows = []
    for rank, policy in enumerate(order, 1):
        wins, ties, losses = record[policy]
        lo, hi = intervals.get(policy, (None, None))
        total = wins + ties + losses
        rows.append({"rank": rank, "policy": policy, "iteration": iteration.get(policy),
                     "rating": ratings[policy], "lo": lo, "hi": hi, "games": total,
                     "wins": wins, "ties": ties, "losses": losses,
                     "win_rate": (wins + 0.5 * ties) / total})
    return rows


def _label(row: dict) -> str:
    it = row["iteration"]
    return (f"it{it} " if it is not None else "") + row["policy"][:8]


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "n/a" if value is None else f"{value:{fmt}}"


def leaderboard_markdown(rows: list[dict]) -> str:
    """The leaderboard as a markdown table (ratings: 1000 is the average policy; 191 points
    between two policies means the better one wins 3 games to 1)."""
    if not rows:
        return "No judged pairs in the lake yet: run an evaluation against an opponent first.\n"
    lines = ["| rank | policy | iteration | rating | 95 % interval | games | W / T / L | "
             "win rate |", "|---:|---|---:|---:|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['policy'][:12]} | {_num(r['iteration'], 'd')} | "
                     f"{r['rating']:.0f} | {_num(r['lo'])} to {_num(r['hi'])} | {r['games']} "
                     f"| {r['wins']} / {r['ties']} / {r['losses']} | {r['win_rate']:.3f} |")
    return "\n".join(lines) + "\n"


def leaderboard_svg(rows: list[dict]) -> str:
    """Each policy's rating with its interval, best first."""
    return intervals_svg("Policy ratings (Bradley-Terry, Elo scale) with 95 % intervals",
                         [_label(r) for r in rows],
                         [r["rating"] for r in rows], [r["lo"] for r in rows],
                         [r["hi"] for r in rows])
