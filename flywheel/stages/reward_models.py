"""Stage 3, retrain the reward models on the lake's mixes (flywheel/reward/retrain.py)."""

from __future__ import annotations

import json

from flywheel.config import FlywheelConfig
from flywheel.lake.store import Lake
from flywheel.reward.retrain import retrain


def pending_batches(lake: Lake) -> list[str]:
    """Batches with a delivery of new rows that no reward model has trained on yet, oldest
    first (a corrected re-delivery of a trained batch is pending again)."""
    trained = set()
    for rm in lake.rows("reward_models"):
        trained.update(json.loads(rm["data_mix"] or "{}").get("deliveries", []))
    landed = sorted((b for b in lake.rows("batches") if b["new"]), key=lambda b: b["created_at"])
    return list(dict.fromkeys(b["batch_id"] for b in landed if b["id"] not in trained))


def train_reward_models(cfg: FlywheelConfig, lake: Lake, iteration: int,
                        batch_id: str | None) -> dict[str, dict]:
    """Retrain the helpfulness and the safety reward model on their Llama 2 mixes of the lake,
    evaluate both on every test set and gate each against the current one of its kind
    (flywheel/reward/retrain.py). Returns, per kind, {id, promoted, decision, current}."""

    return retrain(cfg, lake, iteration, batch_id)


def reward_model_ids(results: dict[str, dict]) -> dict[str, str]:
    """The reward models in use after a retrain: {kind: id}."""
    return {kind: r["current"] for kind, r in results.items()}
