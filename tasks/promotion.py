import json

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flywheel.config import FlywheelConfig
from flywheel.stages import common, promote
from flywheel.stages.report import artifact_report, history_rows


@task(name="promote-or-roll-back", cache_policy=None)
def decide(config: FlywheelConfig, iteration: int, batch_id: str,
           reward_model_ids: dict[str, str], evaluation: dict,
           stage_seconds: dict[str, float]) -> dict:
    """Gate the candidate, record the iteration and publish its report (plots embedded) and
    the table of its rates next to the earlier iterations'."""
    lake = common.open_lake(config)
    row = promote.decide(config, lake, iteration, batch_id, reward_model_ids, evaluation,
                      stage_seconds)
    create_markdown_artifact(key=f"iteration-{iteration}-report",
                             markdown=artifact_report(lake, row),
                             description=f"Iteration {iteration}: {row['decision']}")
    create_table_artifact(key=f"iteration-{iteration}-rates",
                          table=history_rows(lake, row, json.loads(row["metrics"])),
                          description="Win rates, safety rates and mean reward of each "
                          f"iteration up to {iteration}")
    return {**{k: row[k] for k in ("iteration", "policy_in", "policy_out", "promoted",
                                   "decision")},
            "report_uri": lake.url(row["report_uri"])}
