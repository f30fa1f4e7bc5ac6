"""Stage 2, collect comparisons: the simulated annotator labels the week's pairs (or, with
`annotation.quality` set, a round of them with overlap and gold, by several simulated
annotators)."""

from __future__ import annotations

from flywheel import models
from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.pairs import pair_id_of, render_prompt, write_delivery_jsonl
from flywheel.annotation.prompts import user_text
from flywheel.annotation.rounds import round_items
from flywheel.annotation.simulated import ANNOTATOR, Pair, label_round
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
    q = cfg.annotation.quality
    if q.simulated_annotators or q.gold_pairs or q.overlap_share:
        rows = simulated_round(cfg, lake, iteration, judge, todo)
    else:
        rows = label_pairs(judge, todo, cfg.annotation.strength_thresholds)
    data = write_delivery_jsonl(rows)
    batch_id = f"iteration-{iteration:04d}-simulated"
    result = ingest_bytes(lake, data, f"{batch_id}.jsonl", batch_id, cfg.annotation, iteration,
                          source="simulated")
    return result.batch_id


def simulated_round(cfg: FlywheelConfig, lake: Lake, iteration: int, judge: ProxyJudge,
                    todo: list[Pair]) -> list[dict]:
    """Delivery rows of the week's round (flywheel/annotation/rounds.py): its gold pairs
    registered and its manifest kept in the lake first."""
    q = cfg.annotation.quality
    pairs = [{"pair_id": pair_id_of(p.prompt_id, [p.a_id, p.b_id]), "prompt_id": p.prompt_id,
              "messages": [{"role": "user", "content": p.prompt_text}],
              "prompt": render_prompt([{"role": "user", "content": p.prompt_text}]),
              "criterion": p.criterion, "sample_id_a": p.a_id, "text_a": p.a_text,
              "sample_id_b": p.b_id, "text_b": p.b_text} for p in todo]
    names = [a.id for a in q.simulated_annotators] or [ANNOTATOR]
    items = round_items(cfg, lake, iteration, pairs, names)
    return label_round(judge, items, cfg.annotation.strength_thresholds,
                       q.simulated_annotators, f"{cfg.seed}:{iteration}")
