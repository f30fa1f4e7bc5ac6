"""Does `sampling.seed` repeat vLLM's draws? Two fresh engines with the same seed answer the same
prompts, n answers each at the demo's annotation temperature, for a small and a demo-sized
batch; the table counts the answers that came out the same text in both.

    .venv/bin/python benchmarks/bench_sampling_repeat.py [--sizes 4 96] [--n 4]
        [--max-new-tokens 32]

Writes benchmarks/results/sampling_repeat.md.
"""

import argparse
from pathlib import Path

from _machine import describe

from flywheel import models
from flywheel.annotation.prompts import load_prompts, messages_of
from flywheel.policy.sampling import VLLMSampler

OUT = Path(__file__).parent / "results" / "sampling_repeat.md"


def draws(path, msgs, n, max_new, seed):
    sampler = VLLMSampler(path, seed=seed)
    try:
        return [[g.text for g in group] for group in sampler.generate(msgs, n, 0.7, max_new)]
    finally:
        sampler.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 96])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = models.resolve(args.model)
    prompts = [messages_of(p) for p in load_prompts()]
    if max(args.sizes) > len(prompts):
        raise SystemExit(f"--sizes at most {len(prompts)}: the shipped prompts")
    rows = []
    for size in args.sizes:
        msgs = prompts[:size]
        first, second = (draws(path, msgs, args.n, args.max_new_tokens, args.seed)
                         for _ in range(2))
        same = sum(a == b for x, y in zip(first, second) for a, b in zip(x, y))
        rows.append(f"| {size} | {size * args.n} | {same} |")
        print(rows[-1], flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(
        "# Does the sampling seed repeat vLLM's draws?\n\n"
        f"Machine: {describe()}. Model {args.model}, vLLM's CPU build, two fresh engines in one "
        f"process, both seeded {args.seed}; {args.n} answers a prompt at T 0.7, at most "
        f"{args.max_new_tokens} tokens.\n\n"
        "| prompts | answers | the same text in both runs |\n|---|---|---|\n"
        + "\n".join(rows) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
