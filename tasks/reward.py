from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flywheel.config import FlywheelConfig
from flywheel.stages import common, reward_models
from flywheel.stages.report import gate_markdown, table8_markdown, table8_rows
from flywheel.tasks.annotation import publish_annotators
from flywheel.tasks.progress import training_progress
from flywheel.tasks.resume import stage_cache


@task(name="train-reward-models", cache_policy=stage_cache())
def train_reward_models(config: FlywheelConfig, iteration: int,
                        batch_id: str | None) -> dict[str, str]:
    """Retrain the helpfulness and safety reward models on their mixes, evaluate them on every
    test set, gate each against the current one. Returns the ids in use afterwards, by kind."""
    lake = common.open_lake(config)
    with training_progress(f"iteration-{iteration}"):
        results = reward_models.train_reward_models(config, lake, iteration, batch_id)
    logger = get_run_logger()
    for kind, r in results.items():
        logger.info("%s reward model %s: %s", kind, r["id"], r["decision"])
    rows = {r["id"]: r for r in lake.rows("reward_models")}
    trained = [rows[r["id"]] for r in results.values() if r["id"]]
    create_table_artifact(
        key=f"iteration-{iteration}-reward-model-accuracy",
        table=table8_rows(trained),
        description="Reward-model accuracy on held-out comparisons per test set, by preference "
        "strength (Llama 2, Table 8) and safety label",
    )
    create_markdown_artifact(
        key=f"iteration-{iteration}-reward-models",
        markdown="# Reward models\n\n## Promotion gate\n\n" + gate_markdown(trained)
        + "".join(f"- **{k}**: {r['decision']}\n" for k, r in results.items() if not r["id"])
        + "\n## Accuracy by preference strength (Table 8)\n\n" + table8_markdown(trained),
        description=f"Iteration {iteration}: reward models trained, evaluated and gated",
    )
    publish_annotators(config, lake, iteration, batch_id)
    return reward_models.reward_model_ids(results)
