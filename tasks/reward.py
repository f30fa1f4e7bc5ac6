import json

from prefect import task
from prefect.artifacts import create_table_artifact

from flywheel import loop
from flywheel.config import FlywheelConfig
from flywheel.schemas import STRENGTHS


@task(name="train-reward-model", cache_policy=None)
def train_reward_model(config: FlywheelConfig, iteration: int, batch_id: str) -> str:
    """Train the reward model on every in-house train comparison; accuracy on the test rows."""
    lake = loop.open_lake(config)
    rm_id = loop.train_reward_model(config, lake, iteration, batch_id)
    row = next(r for r in lake.rows("reward_models") if r["id"] == rm_id)
    m = json.loads(row["metrics"])
    table = {s.replace("_", " "): m["by_strength"].get(s, {}).get("accuracy") for s in STRENGTHS}
    create_table_artifact(
        key=f"iteration-{iteration}-reward-model-accuracy",
        table=[{"model": rm_id, **table, "overall": m["accuracy"], "test pairs": m["n"],
                "train accuracy": m["train"]}],
        description="Reward-model accuracy on held-out comparisons, by preference strength",
    )
    return rm_id
