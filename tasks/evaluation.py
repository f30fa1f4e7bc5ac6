from prefect import task
from prefect.artifacts import create_table_artifact

from flywheel.config import FlywheelConfig
from flywheel.evaluation.leaderboard import leaderboard
from flywheel.lake.store import Lake
from flywheel.stages import common
from flywheel.stages import evaluate as evaluate_stage
from flywheel.tasks.resume import stage_cache


@task(name="evaluate", cache_policy=stage_cache())
def evaluate(config: FlywheelConfig, iteration: int, candidate_id: str) -> dict:
    """Candidate against its parent on held-out prompts, by the proxy judge."""
    return evaluate_stage.evaluate(config, common.open_lake(config), iteration, candidate_id)


def publish_leaderboard(lake: Lake, judge: str | None = None, n: int = 1000) -> list[dict]:
    """Every policy's rating over the lake's judged pairs, as the Prefect table artifact
    "leaderboard" (one key, so the UI keeps its history run after run). Returns the rows."""
    rows = leaderboard(lake, judge=judge, n=n)
    create_table_artifact(
        key="leaderboard",
        table=[{**r, **{k: None if r[k] is None else round(r[k], 1) for k in ("rating", "lo",
                                                                               "hi")},
                "win_rate": round(r["win_rate"], 3)} for r in rows],
        description="Bradley-Terry ratings (Elo scale, 1000 the average policy) with 95 % "
        "bootstrap intervals, from every judged pair" + (f" of judge {judge}" if judge else ""))
    return rows
