from prefect import task
from prefect.artifacts import create_table_artifact

from flywheel.config import FlywheelConfig
from flywheel.stages import common
from flywheel.stages import evaluate as evaluate_stage
from flywheel.tasks.resume import stage_cache


@task(name="evaluate", cache_policy=stage_cache())
def evaluate(config: FlywheelConfig, iteration: int, candidate_id: str) -> dict:
    """Candidate against its parent on held-out prompts and the configured suites, by the
    configured judge; the leaderboard as a table artifact."""
    result = evaluate_stage.evaluate(config, common.open_lake(config), iteration, candidate_id)
    publish_leaderboard(result["leaderboard"], result["judge"])
    return result


def publish_leaderboard(rows: list[dict], judge: str | None = None) -> list[dict]:
    """Leaderboard rows (`flywheel.evaluation.leaderboard.leaderboard`) as the Prefect table
    artifact "leaderboard" (one key, so the UI keeps its history run after run)."""
    create_table_artifact(
        key="leaderboard",
        table=[{**r, **{k: None if r[k] is None else round(r[k], 1) for k in ("rating", "lo",
                                                                               "hi")},
                "win_rate": round(r["win_rate"], 3)} for r in rows],
        description="Bradley-Terry ratings (Elo scale, 1000 the average policy) with 95 % "
        "bootstrap intervals, from every judged pair" + (f" of judge {judge}" if judge else ""))
    return rows
