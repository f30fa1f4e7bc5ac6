"""Stage 6, promote or roll back: the gate, the iteration row and its report."""

from __future__ import annotations

import json

from flywheel.config import FlywheelConfig
from flywheel.evaluation.gate import gate
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.stages.report import iteration_plots, iteration_report, plot_path, used_reward_models


def decide(cfg: FlywheelConfig, lake: Lake, iteration: int, batch_id: str,
           rm_ids: dict[str, str], evaluation: dict, stage_seconds: dict[str, float]) -> dict:
    """Promote or roll back; write the iteration row and its markdown report. Returns the row
    with the report's text under `report`."""

    promoted, why, conditions = gate(evaluation, cfg.evaluation)
    metrics = {**evaluation, "gate": {"mode": cfg.evaluation.gate, "conditions": conditions},
               "stage_seconds": stage_seconds}
    row = {
        "id": content_id("iteration", iteration, evaluation["candidate"]),
        "iteration": iteration, "policy_in": evaluation["baseline"],
        "policy_out": evaluation["candidate"], "reward_model_id": rm_ids["helpfulness"],
        "safety_reward_model_id": rm_ids["safety"], "batch_id": batch_id,
        "promoted": promoted, "decision": why, "metrics": json.dumps(metrics),
    }
    row["report_uri"] = f"reports/iteration-{iteration:04d}.md"  # relative to the lake
    plots = iteration_plots(lake, row, metrics, used_reward_models(lake, row))
    for name, svg in plots.items():  # next to the report, which links them by relative path
        lake.write_text(plot_path(iteration, name), svg)
    report = iteration_report(lake, row, metrics, {
        name: plot_path(iteration, name).removeprefix("reports/") for name in plots})
    lake.write_text(row["report_uri"], report)
    lake.write("iterations", [row], {"stage": "decide"})
    return {**row, "report": report}
