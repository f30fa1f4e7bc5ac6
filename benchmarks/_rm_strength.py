"""`bench_reward_models.py --strength`: reward-model accuracy per preference strength on in-house
batches labelled by the simulated annotator: the trend of Llama 2's Table 8 (accuracy rises from
"negligibly better / unsure" to "significantly better"), measured through the product path.

    .venv/bin/python benchmarks/bench_reward_models.py --strength [--helpful 1200]
        [--harmless 600] [--batches 2] [--backbone builtin:all-minilm-l6-v2] [--quick]

Prompts and response pairs are real: Anthropic HH-RLHF dialogues from ../shared/data (the helpful-
base file for helpfulness prompts, the harmless-base file for safety prompts), each record's two
final replies being the two responses. The labels are the simulated annotator's
(flywheel/annotation/simulated.py: the proxy judge's choice, strength from the judge-score margin,
safety label), not Anthropic's. The labelled rows are delivered as weekly in-house batches in the
Llama 2 protocol through `flywheel.annotation.ingest` (each batch holds out its test rows), then
`flywheel.reward.retrain.retrain` trains the helpfulness and the safety reward model on their mixes,
evaluates them on every test set and gates them, exactly as the retrain flow does. Writes
benchmarks/results/rm_strength.md."""


from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

from flywheel import models
from flywheel.annotation.importers import convert
from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.simulated import Pair, annotate
from flywheel.config import AnnotationConfig, validate_config
from flywheel.evaluation.proxy import ProxyJudge
from flywheel.lake.schemas import STRENGTHS
from flywheel.lake.store import Lake
from flywheel.reward.retrain import retrain
from flywheel.stages.report import table8_markdown

HELPFUL = "hh_rlhf_helpful_base_test.jsonl.gz"
HARMLESS = "hh_rlhf_harmless_base_test_dev.jsonl.gz"
OUT = Path(__file__).parent / "results" / "rm_strength.md"
# this mode's defaults for the options it shares with bench_reward_models.py's main run
DEFAULTS = {"epochs": 2, "max_length": 256, "batch_size": 16}


def hh_pairs(path: Path, limit: int) -> list[dict]:
    """Delivery rows of the first `limit` usable records (converted, distinct responses)."""
    rows = [r for r in convert(str(path), "hh-rlhf")
            if not r["reject_reason"] and r["response_a"].strip() and r["response_b"].strip()
            and r["response_a"].strip() != r["response_b"].strip()]
    return rows[:limit]


def simulated_labels(rows: list[dict], judge: ProxyJudge, thresholds: list[float],
                     seed: int) -> list[dict]:
    """The simulated annotator's label of each pair, as inline delivery rows (the two replies
    in a random order, so neither position is the HH-chosen one)."""
    rng = random.Random(seed)
    pairs, texts = [], []
    for i, r in enumerate(rows):
        a, b = r["response_a"], r["response_b"]
        if rng.random() < 0.5:
            a, b = b, a
        messages = json.loads(r["prompt"]) if isinstance(r["prompt"], str) else r["prompt"]
        prompt_text = "\n".join(m["content"] for m in messages if m["role"] == "user")
        pairs.append(Pair(str(i), prompt_text, r["criterion"], "a", a, "b", b))
        texts.append((messages, a, b))
    out = []
    for (prompt, a, b), lab in zip(texts, annotate(judge, pairs, thresholds)):
        out.append({"prompt": prompt, "response_a": a, "response_b": b,
                    "chosen": lab["chosen"], "strength": lab["strength"],
                    "criterion": lab["criterion"], "safety_label": lab["safety_label"],
                    "annotator": lab["annotator"]})
    return out


def run(args) -> None:
    """Label, deliver, retrain and write the table; `args` as bench_reward_models.py parses
    them (--helpful, --harmless, --batches, --backbone, --lr, --epochs, --max-length,
    --batch-size, --seed, --data, --quick, --out)."""
    if args.quick:
        args.helpful, args.harmless, args.epochs = 160, 80, 1
    out_path = args.out or (OUT.with_name("rm_strength_quick.md") if args.quick else OUT)
    for name in (HELPFUL, HARMLESS):
        if not (args.data / name).is_file():
            sys.exit(f"{args.data / name} is missing; pass --data with the folder holding the "
                     "HH-RLHF files (../shared/data)")
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = (hh_pairs(args.data / HELPFUL, args.helpful)
            + hh_pairs(args.data / HARMLESS, args.harmless))
    judge = ProxyJudge(models.resolve("builtin:all-minilm-l6-v2"))
    thresholds = AnnotationConfig().strength_thresholds
    labelled = simulated_labels(rows, judge, thresholds, args.seed)
    random.Random(args.seed).shuffle(labelled)
    label_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-rm-strength-") as tmp:
        lake = Lake.open(f"{tmp}/lake")
        ingested = []
        for k in range(args.batches):
            part = labelled[k :: args.batches]
            data = "".join(json.dumps(r) + "\n" for r in part).encode()
            res = ingest_bytes(lake, data, f"week-{k + 1}.jsonl",
                               cfg=AnnotationConfig(heldout_fraction=0.2))
            ingested.append(res)
            print(res.summary(), flush=True)
        cfg = validate_config({
            "lake": f"{tmp}/lake",
            "models": {"reward_backbone": args.backbone},
            "reward_model": {"learning_rate": args.lr, "epochs": args.epochs,
                             "batch_size": args.batch_size, "micro_batch_size": args.batch_size,
                             "max_length": args.max_length, "margin": "small",
                             "seed": args.seed, "mix": {"allow_short": True}},
        })
        t1 = time.perf_counter()
        results = retrain(cfg, lake, iteration=1)
        train_s = time.perf_counter() - t1
        rms = {r["id"]: r for r in lake.rows("reward_models")}
        trained = [rms[r["id"]] for r in results.values() if r["id"]]
    load_end = os.getloadavg()[0]
    lines = [
        "# Reward-model accuracy per preference strength, simulated in-house batches",
        "",
        f"Machine: {describe()}. Date {time.strftime('%Y-%m-%d')}. Load average (1 min) "
        f"{load_start:.1f} at the start, {load_end:.1f} at the end.",
        f"Command: `.venv/bin/python benchmarks/bench_reward_models.py --strength "
        f"--helpful {args.helpful} "
        f"--harmless {args.harmless} --batches {args.batches} --backbone {args.backbone} "
        f"--lr {args.lr} --epochs {args.epochs} --max-length {args.max_length} "
        f"--batch-size {args.batch_size}`" + (" (--quick)" if args.quick else ""),
        "",
        f"{len(rows)} HH-RLHF prompts with their two replies, labelled by the simulated "
        f"annotator (strength thresholds {thresholds} on the judge-score margin) in "
        f"{label_s:.0f} s, delivered as {args.batches} in-house batches; both reward models "
        f"trained, evaluated and gated by `retrain` in {train_s:.0f} s "
        f"(backbone {args.backbone}, margin table small, {args.epochs} epoch(s)).",
        "",
        "Deliveries:",
        "",
        *[f"- {r.summary().splitlines()[0]}" for r in ingested],
        "",
        "## Accuracy on each model's own in-house test rows, by strength",
        "",
        "| reward model | " + " | ".join(s.replace("_", " ") for s in STRENGTHS)
        + " | avg | test pairs | train accuracy | mix |",
        "|" + "---|" * (len(STRENGTHS) + 5),
    ]
    for rm in trained:
        m = json.loads(rm["metrics"])
        own = m["in_house"]
        cells = [f"{own['by_strength'][s]['accuracy']:.3f} (n={own['by_strength'][s]['n']})"
                 if s in own["by_strength"] else "n/a" for s in STRENGTHS]
        mix = json.loads(rm["data_mix"])["counts"]
        lines.append(f"| {rm['criterion']} | " + " | ".join(cells)
                     + f" | {own['accuracy']:.3f} | {own['n']} | "
                     f"{m['train']['accuracy']:.3f} | {mix['total']} rows |")
    lines += [
        "",
        "## Every test set (Llama 2 Table 8 layout, with safety labels)",
        "",
        table8_markdown(trained),
        "Llama 2 (Table 8, helpfulness RM on Meta Helpful): 80.7 / 67.5 / 60.9 / 54.7, average "
        "63.2. There, the labels come from people and the buckets from their own rating; here "
        "they come from a fixed proxy judge, whose larger score margins are easier to learn, "
        "so the same rise is expected, at a different level.",
        "",
    ]
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text("\n".join(lines))
    print("\n".join(lines))

