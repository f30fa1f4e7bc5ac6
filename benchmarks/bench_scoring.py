"""Scoring throughput: the scoring engine against the plain path, a transformers
sequence-classification model over padded batches of full sequences; same backbone and head,
same inputs, side by side in one run, at K = 4, 8 and 16 responses per prompt.

    .venv/bin/python benchmarks/bench_scoring.py [--backbone builtin:smollm2-135m-instruct]
        [--prompts 12] [--ks 4,8,16] [--max-length 512] [--batch-size 8]
        [--token-budget 4096] [--reps 2] [--threads N] [--seed 0] [--out PATH]

Inputs: real multi-turn prompts with real replies from the HH-RLHF helpful-base file in
../shared/data (read through `flywheel.annotation.importers.convert`). Each prompt is the
conversation up to
its last assistant turn; its K responses are its own chosen and rejected replies and K - 2
replies drawn (seeded) from other conversations, as a policy's samples would vary in length.
Prompts are the first `--prompts` rows whose dialogue has at least two human turns (the common
case in the multi-turn data the reward models score).

The reward model: the backbone (default the demo's, SmolLM2-135M-Instruct, a Llama decoder) with
a scalar head drawn at random (seeded, no bias) and copied into the sequence-classification
model's `score` layer, so both paths compute the same function; the table reports the largest
difference between their scores as a check.

Paths, each timed over all K x prompts sequences, in float32 on the CPU:
- plain: `AutoModelForSequenceClassification`, batches of `--batch-size` sequences in input order
  (a prompt's K responses together), padded to the longest in the batch; the head projects every
  position, then the last real token's score is taken;
- engine, no prefix reuse: `ScoringEngine(reuse_prefix=False)`: length buckets of
  `--token-budget` padded tokens, last-token read-out with the deferred norm;
- engine: the same plus prefix reuse, each prompt once for its K responses.
The three paths run interleaved `--reps` times per K and each keeps its fastest run: on a shared
machine the other load comes and goes, and the minimum is the run it disturbed least.
Throughput is tokens of the full sequences scored (prompt + response, each row) per second: the
same count for every path. Writes benchmarks/results/scoring.md (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import time
from pathlib import Path

import torch
from _machine import describe

from flywheel.annotation.importers import convert
from flywheel.models import resolve
from flywheel.reward.model import RewardModel
from flywheel.reward.scoring import Group, ScoringEngine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILE = "hh_rlhf_helpful_base_test.jsonl.gz"
OUT = Path(__file__).parent / "results" / "scoring.md"


def load_groups(n: int, k: int, seed: int) -> list[Group]:
    rows = [r for r in convert(str(DATA / HH_FILE), fmt="hh-rlhf") if not r["reject_reason"]
            and r["response_a"].strip() and r["response_b"].strip()]
    replies = [x for r in rows for x in (r["response_a"], r["response_b"])]
    multi = [r for r in rows if sum(m["role"] == "user" for m in json.loads(r["prompt"])) >= 2]
    rng = random.Random(seed)
    groups = []
    for r in multi[:n]:
        extra = [replies[rng.randrange(len(replies))] for _ in range(k - 2)]
        groups.append(Group(json.loads(r["prompt"]), [r["response_a"], r["response_b"], *extra]))
    return groups


class PlainScorer:
    """The transformers sequence-classification path with the reward model's head."""

    def __init__(self, path: str, rm: RewardModel, max_length: int, batch_size: int):
        from transformers import AutoModelForSequenceClassification

        self.tok = rm.tokenizer
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32).eval()
        self.model.config.pad_token_id = self.tok.pad_token_id
        with torch.no_grad():
            self.model.score.weight.copy_(rm.head.weight)
        self.rm, self.max_length, self.batch_size = rm, max_length, batch_size
        self.tokens = 0
        self.computed = 0

    @torch.no_grad()
    def score(self, groups: list[Group]) -> list[float]:
        msgs = [g.messages for g in groups for _ in g.responses]
        resp = [r for g in groups for r in g.responses]
        out = []
        for i in range(0, len(resp), self.batch_size):
            # RewardModel.encode: the chat template, right padding, left truncation
            enc = self.rm.encode(msgs[i: i + self.batch_size], resp[i: i + self.batch_size],
                                 self.max_length)
            self.tokens += int(enc["attention_mask"].sum())
            self.computed += enc["input_ids"].numel()
            logits = self.model(input_ids=enc["input_ids"],
                                attention_mask=enc["attention_mask"]).logits
            out += logits[:, 0].tolist()
        return out


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--ks", default="4,8,16")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve(args.backbone)
    torch.manual_seed(args.seed)
    rm = RewardModel.from_backbone(path).eval()
    with torch.no_grad():
        rm.head.weight.normal_(0, 0.05)
        rm.head.bias.zero_()  # the sequence-classification head of a Llama has no bias
    plain = PlainScorer(path, rm, args.max_length, args.batch_size)
    ks = [int(k) for k in args.ks.split(",")]
    # warm-up: first calls allocate and pick kernels
    warm = load_groups(2, 2, args.seed)
    plain.score(warm)
    ScoringEngine(args.max_length, progress=False).rewards(rm, warm)

    results = []
    for k in ks:
        groups = load_groups(args.prompts, k, args.seed)
        row = {"k": k, "prompts": len(groups), "sequences": len(groups) * k}
        for _ in range(args.reps):
            plain.tokens = plain.computed = 0
            p_scores, p_s = timed(lambda: plain.score(groups))
            row["plain_s"] = min(p_s, row.get("plain_s", p_s))
            row["tokens"], row["plain_computed"] = plain.tokens, plain.computed
            for name, reuse in (("bucketed", False), ("engine", True)):
                eng = ScoringEngine(args.max_length, args.token_budget, reuse_prefix=reuse,
                                    progress=False)
                scores, secs = timed(lambda: eng.rewards(rm, groups))
                flat = [s for g in scores for s in g]
                assert eng.stats.tokens == plain.tokens, (eng.stats.tokens, plain.tokens)
                row[f"{name}_s"] = min(secs, row.get(f"{name}_s", secs))
                row[f"{name}_computed"] = eng.stats.computed_tokens
                row[f"{name}_maxdiff"] = max(abs(a - b) for a, b in zip(flat, p_scores))
        results.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        "# Scoring engine vs a sequence-classification model (CPU)",
        "",
        f"Machine: {describe()}, {torch.get_num_threads()} torch threads. Run "
        f"{datetime.date.today().isoformat()}. Backbone: {args.backbone} (float32), scalar head "
        f"drawn at random and shared by both paths. Inputs: {args.prompts} multi-turn prompts "
        f"of {HH_FILE} with K real replies each (their own two and K - 2 from other rows), "
        f"max_length {args.max_length}. Plain path: batches of {args.batch_size} sequences; "
        f"engine: token budget {args.token_budget}. Each path's fastest of {args.reps} "
        "interleaved runs.",
        "Command: `.venv/bin/python benchmarks/bench_scoring.py`",
        "",
        "| K | sequences | tokens scored | plain tok/s | bucketed tok/s | engine tok/s | "
        "engine / plain | bucketed / plain | tokens run (plain / bucketed / engine) | "
        "max score diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tp = {n: r["tokens"] / r[f"{n}_s"] for n in ("plain", "bucketed", "engine")}
        lines.append(
            f"| {r['k']} | {r['sequences']} | {r['tokens']} | {tp['plain']:.0f} | "
            f"{tp['bucketed']:.0f} | {tp['engine']:.0f} | "
            f"**{tp['engine'] / tp['plain']:.2f}x** | {tp['bucketed'] / tp['plain']:.2f}x | "
            f"{r['plain_computed']} / {r['bucketed_computed']} / {r['engine_computed']} | "
            f"{max(r['bucketed_maxdiff'], r['engine_maxdiff']):.1e} |")
    lines += [
        "",
        "tok/s: tokens of the full sequences scored per second (the same count for every path). "
        "\"bucketed\" is the engine without prefix reuse (length buckets and the last-token "
        "read-out only). \"tokens run\" counts the positions the backbone computed, padding "
        "included. Max score diff: the largest "
        "absolute difference from the plain path's scores, over both engine modes.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
