from prefect import task
from prefect.artifacts import create_markdown_artifact

from flywheel import loop
from flywheel.config import FlywheelConfig


@task(name="promote-or-roll-back", cache_policy=None)
def decide(config: FlywheelConfig, iteration: int, batch_id: str,
           reward_model_ids: dict[str, str], evaluation: dict,
           stage_seconds: dict[str, float]) -> dict:
    """Gate the candidate, record the iteration and publish its report."""
    lake = loop.open_lake(config)
    row = loop.decide(config, lake, iteration, batch_id, reward_model_ids, evaluation,
                      stage_seconds)
    create_markdown_artifact(key=f"iteration-{iteration}-report", markdown=row["report"],
                             description=f"Iteration {iteration}: {row['decision']}")
    return {k: row[k] for k in ("iteration", "policy_in", "policy_out", "promoted", "decision",
                                "report_uri")}
