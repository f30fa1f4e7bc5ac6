"""Stage 2, collect comparisons: the simulated annotator labels the week's pairs."""

from __future__ import annotations

from flywheel import models
from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.pairs import write_delivery_jsonl
from flywheel.annotation.prompts import user_text
from flywheel.annotation.simulated import Pair
from flywheel.annotation.simulated import annotate as label_pairs
from flywheel.config import FlywheelConfig
from flywheel.evaluation.proxy import ProxyJudge
from flywheel.lake.catalog import connect, rows_by_id
from flywheel.lake.store import Lake


def annotate(cfg: FlywheelConfig, lake: Lake, iteration: int, pairs: list[list[str]]) -> str:
    """Label the pairs with the simulated annotator and ingest them as one batch, through the
    same validation as any delivered batch. Returns the batch id."""
    with connect(lake) as con:
        samples = rows_by_id(con, "samples", [i for pair in pairs for i in pair],
                             ["prompt_id", "text"])
        prompts = rows_by_id(con, "prompts", [s["prompt_id"] for s in samples.values()],
                             ["criterion", "messages"])
    todo = []
    for a_id, b_id in pairs:
        a, b = samples[a_id], samples[b_id]
        p = prompts[a["prompt_id"]]
        todo.append(Pair(p["id"], user_text(p), p["criterion"], a_id, a["text"], b_id, b["text"]))
    judge = ProxyJudge(models.resolve(cfg.models.judge_embedder))
    rows = label_pairs(judge, todo, cfg.annotation.strength_thresholds)
    data = write_delivery_jsonl(rows)
    batch_id = f"iteration-{iteration:04d}-simulated"
    result = ingest_bytes(lake, data, f"{batch_id}.jsonl", batch_id, cfg.annotation, iteration,
                          source="simulated")
    return result.batch_id
