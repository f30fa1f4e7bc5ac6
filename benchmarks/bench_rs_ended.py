"""Answers that end: how many rejection-sampling draws of the demo policy end within the token
limit (or at a stop string) with the prompt as it is, with a larger limit, and drawn with a
brevity system prompt; how many train prompts get at least one ended draw among K; what the
proxy judge makes of them (its helpfulness score: relevance, less for repetition and for
answers under 20 words).

    .venv/bin/python benchmarks/bench_rs_ended.py [--prompts 32] [--k 8]
        [--only I ...] [--dtype auto] [--out benchmarks/results/rs_ended.md]

The helpful train prompts of the shipped set, a fixed shuffle; temperature 0.5 as
deployments/demo.yaml's rejection sampling; one vLLM engine for every variant.
"""

import argparse
import random
import statistics
import time
from pathlib import Path

from _machine import describe

from flywheel import models
from flywheel.annotation.prompts import load_prompts, messages_of, user_text
from flywheel.evaluation.proxy import ProxyJudge
from flywheel.policy.sampling import VLLMSampler

OUT = Path(__file__).parent / "results" / "rs_ended.md"
STOP = ["\nUser:", "\nAssistant:"]
CONCISE = "You are a concise assistant. Give a short, complete answer of at most 50 words."
BRIEF = "Answer briefly, in two or three sentences."
FEW_SHOT = (
    "You are a helpful assistant. You answer every request in two or three short sentences, "
    "then stop. Example.\nUser: How do I boil an egg?\nAssistant: Put the egg in boiling water "
    "for nine minutes, then cool it in cold water. Peel it once it is cool.\nUser: What is "
    "photosynthesis?\nAssistant: Photosynthesis is how plants turn sunlight, water and carbon "
    "dioxide into sugar and oxygen. It happens mostly in their leaves.\nAnswer every request "
    "the same way: briefly and completely, then stop.")
CONCISE_30 = "You are a concise assistant. Give a short, complete answer of at most 30 words."
VARIANTS = [("as it is, 64 tokens", None, 64), ("as it is, 128 tokens", None, 128),
            ("'two or three sentences', 64", BRIEF, 64),
            ("'concise, at most 50 words', 64", CONCISE, 64),
            ("few-shot brevity, 64", FEW_SHOT, 64),
            ("'concise, at most 50 words', 96", CONCISE, 96),
            ("'concise, at most 30 words', 64", CONCISE_30, 64),
            ("'two or three sentences', 96", BRIEF, 96), ("as it is, 96 tokens", None, 96),
            ("few-shot brevity, 96", FEW_SHOT, 96)]


def run(sampler, judge, prompts, system, limit, k) -> dict:
    msgs = [messages_of(p) for p in prompts]
    if system:
        msgs = [[{"role": "system", "content": system}]
                + [m for m in ms if m["role"] != "system"] for ms in msgs]
    t0 = time.perf_counter()
    gens = sampler.generate(msgs, k, 0.5, limit, 1.0, STOP)
    seconds = time.perf_counter() - t0
    flat = [(p, g) for p, gs in zip(prompts, gens) for g in gs]
    js = judge.judge([user_text(p) for p, _ in flat], ["helpfulness"] * len(flat),
                     [g.text for _, g in flat])
    ended = [g.token_count < limit for _, g in flat]
    best_all, best_ended = [], []
    for i in range(len(prompts)):
        group = [(e, j.score) for e, j in zip(ended[k * i:k * i + k], js[k * i:k * i + k])]
        best_all.append(max(s for _, s in group))
        if any(e for e, _ in group):
            best_ended.append(max(s for e, s in group if e))
    return {"seconds": seconds, "ended": statistics.fmean(ended),
            "prompts_ended": len(best_ended) / len(prompts),
            "tokens": statistics.fmean(g.token_count for _, g in flat),
            "judge": statistics.fmean(j.score for j in js),
            "judge_ended": statistics.fmean([j.score for e, j in zip(ended, js) if e] or [0.0]),
            "best_all": statistics.fmean(best_all),
            "best_ended": statistics.fmean(best_ended) if best_ended else 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", type=int, nargs="*", default=None,
                    help="run only these variants (0-based rows of VARIANTS)")
    ap.add_argument("--dtype", default="float32", help="the engine's dtype (auto: bfloat16 "
                    "where native)")
    args = ap.parse_args()
    helpful = [p for p in load_prompts(None)
               if p["split"] == "train" and p["criterion"] == "helpfulness"]
    random.Random(0).shuffle(helpful)
    prompts = helpful[: args.prompts]
    sampler = VLLMSampler(models.resolve("builtin:smollm2-135m-instruct"), dtype=args.dtype)
    judge = ProxyJudge(models.resolve("builtin:all-minilm-l6-v2"))
    lines = ["# Rejection-sampling draws that end", "",
             f"Machine: {describe()}; load average as it ended: "
             f"{', '.join(Path('/proc/loadavg').read_text().split()[:3])} (seconds are rough on "
             f"a shared machine). SmolLM2-135M-Instruct through vLLM ({args.dtype}), "
             f"temperature 0.5, stop strings {STOP!r}, {args.prompts} helpful train prompts x "
             f"K={args.k}.", "",
             "| drawn with | seconds | draws ended | prompts with an ended draw | mean tokens "
             "| judge, all draws | judge, ended draws | judge's best of K | judge's best ended "
             "of K |", "|---|---|---|---|---|---|---|---|---|"]
    try:
        for i, (name, system, limit) in enumerate(VARIANTS):
            if args.only is not None and i not in args.only:
                continue
            r = run(sampler, judge, prompts, system, limit, args.k)
            lines.append(f"| {name} | {r['seconds']:.0f} | {r['ended']:.3f} | "
                         f"{r['prompts_ended']:.3f} | {r['tokens']:.1f} | {r['judge']:.3f} | "
                         f"{r['judge_ended']:.3f} | {r['best_all']:.3f} | "
                         f"{r['best_ended']:.3f} |")
            print(lines[-1], flush=True)
    finally:
        sampler.close()
    args.out.write_text("\n".join(lines + [""]))


if __name__ == "__main__":
    main()
