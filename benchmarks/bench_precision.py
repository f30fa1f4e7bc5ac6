"""float32 against bfloat16 for the demo's three heaviest kinds of work, side by side in one run:
vLLM sampling (`sampling.dtype`), reward-model training and policy fine-tuning (`precision`,
bfloat16 autocast over float32 weights). On a CPU with AVX-512 BF16 (or AMX) bfloat16 matrix
products run natively; elsewhere torch emulates them and `auto` stays float32.

    .venv/bin/python benchmarks/bench_precision.py [--prompts 128] [--pairs 480]
        [--examples 64] [--out benchmarks/results/precision.md]

- Sampling: the demo policy (builtin:smollm2-135m-instruct) on the first `--prompts` of the
  shipped demo prompts, 2 answers each at T 0.7 and 64 tokens, one engine per dtype, each in a
  fresh process; output tokens/s, and on 64 prompts at T 0 the share of greedy answers whose
  first 16 words agree between the two dtypes.
- Reward model: `train_reward_model` on the embedded default's backbone (all-MiniLM-L6-v2),
  `--pairs` Anthropic HH-RLHF harmless train pairs (bench_reward_models.py's split), one epoch,
  8 pairs a step, 128 tokens; pairs/s of the step loop and accuracy on 400 held-out pairs.
- Fine-tuning: `finetune` of the demo policy on `--examples` (prompt, chosen answer) pairs of
  HH-RLHF helpful, 2 epochs of 8; seconds per step and the last step's loss.

Each pair of runs alternates order (float32 first, then bfloat16 first) so a change in load
falls on both; the table gives both runs of each and the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

from _machine import describe
from bench_reward_models import DATA, SETS, load_pairs, split

OUT = Path(__file__).parent / "results" / "precision.md"
PROMPTS = Path(__file__).resolve().parents[1] / "flywheel" / "data" / "demo_prompts.jsonl"


def _sample(dtype: str, n_prompts: int, queue) -> None:
    from flywheel.models import resolve
    from flywheel.policy.sampling import VLLMSampler

    rows = [json.loads(line) for line in PROMPTS.open()][:n_prompts]
    messages = [[{"role": "user", "content": r["text"]}] for r in rows]
    sampler = VLLMSampler(resolve("builtin:smollm2-135m-instruct"), dtype=dtype)
    sampler.generate(messages[:4], 1, 0.7, 8)  # warm
    start = time.perf_counter()
    out = sampler.generate(messages, 2, 0.7, 64)
    seconds = time.perf_counter() - start
    greedy = sampler.generate(messages[:64], 1, 0.0, 64)
    queue.put({"tokens": sum(g.token_count for o in out for g in o), "seconds": seconds,
               "greedy": [o[0].text for o in greedy]})
    queue.close()
    queue.join_thread()
    sampler.close()
    os._exit(0)  # an engine's interpreter shutdown can wait on its worker for good


def sample(dtype: str, n_prompts: int) -> dict:
    ctx = mp.get_context("spawn")  # a fresh process per engine: nothing of the other one stays
    q = ctx.Queue()
    p = ctx.Process(target=_sample, args=(dtype, n_prompts, q))
    p.start()
    result = q.get(timeout=1800)
    p.join(120)
    if p.is_alive():
        p.kill()
    return result


def reward_model(precision: str, train, test) -> dict:
    from flywheel.config import RewardModelConfig
    from flywheel.models import resolve
    from flywheel.reward.evaluation import accuracy
    from flywheel.reward.train import train_reward_model

    cfg = RewardModelConfig(epochs=1, batch_size=8, micro_batch_size=8, max_length=128,
                            learning_rate=1e-4, seed=0, precision=precision)
    model, metrics = train_reward_model(resolve("builtin:all-minilm-l6-v2"), train, cfg,
                                        f"reward model ({precision})")
    return {"pairs_per_s": 8 / metrics["seconds_per_step"],
            "accuracy": accuracy(model, test, 128)["accuracy"]}


def finetune(precision: str, examples) -> dict:
    from flywheel.config.policy_update import RejectionSamplingConfig
    from flywheel.models import resolve
    from flywheel.policy.finetune import finetune as run

    cfg = RejectionSamplingConfig(epochs=2, batch_size=8, micro_batch_size=4, max_length=256,
                                  learning_rate=1e-4, seed=0, precision=precision)
    with tempfile.TemporaryDirectory() as out:
        m = run(resolve("builtin:smollm2-135m-instruct"), examples, cfg, out)
    return {"seconds_per_step": m["seconds_per_step"], "loss_last": m["loss_last"]}


def agree(a: list[str], b: list[str], words: int = 16) -> float:
    return statistics.mean(x.split()[:words] == y.split()[:words] for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=480)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from flywheel.devices import native_bf16

    pairs, _ = load_pairs(SETS["safety"], DATA)
    train, test = split(pairs)
    train, test = train[: args.pairs], test[:400]
    helpful, _ = load_pairs(SETS["helpfulness"], DATA)
    examples = [(p.messages, p.chosen) for p in helpful[: args.examples]]

    runs = {"sampling": {}, "reward model": {}, "fine-tune": {}}
    for order in (("float32", "bfloat16"), ("bfloat16", "float32")):
        for dtype in order:
            precision = "bf16" if dtype == "bfloat16" else "fp32"
            print(f"{dtype}: sampling", flush=True)
            runs["sampling"].setdefault(dtype, []).append(sample(dtype, args.prompts))
            print(f"{dtype}: reward model", flush=True)
            runs["reward model"].setdefault(dtype, []).append(reward_model(precision, train, test))
            print(f"{dtype}: fine-tune", flush=True)
            runs["fine-tune"].setdefault(dtype, []).append(finetune(precision, examples))

    def two(values, fmt):
        return ", ".join(fmt.format(v) for v in values)

    s, r, f = runs["sampling"], runs["reward model"], runs["fine-tune"]
    tps = {d: [x["tokens"] / x["seconds"] for x in s[d]] for d in s}
    pps = {d: [x["pairs_per_s"] for x in r[d]] for d in r}
    sps = {d: [x["seconds_per_step"] for x in f[d]] for d in f}
    ratio = {"sampling": statistics.mean(tps["bfloat16"]) / statistics.mean(tps["float32"]),
             "reward model": statistics.mean(pps["bfloat16"]) / statistics.mean(pps["float32"]),
             "fine-tune": statistics.mean(sps["float32"]) / statistics.mean(sps["bfloat16"])}
    lines = [
        "# float32 against bfloat16 on this machine",
        "",
        f"Machine: {describe()}; bfloat16 native here: {native_bf16()}. Load average as the run "
        f"ended: {os.getloadavg()[0]:.2f}. Written by benchmarks/bench_precision.py "
        f"(--prompts {args.prompts} --pairs {args.pairs} --examples {args.examples}).",
        "",
        "| work | float32 (two runs) | bfloat16 (two runs) | bfloat16's speed-up |",
        "|---|---|---|---|",
        f"| vLLM sampling, output tokens/s | {two(tps['float32'], '{:.0f}')} | "
        f"{two(tps['bfloat16'], '{:.0f}')} | {ratio['sampling']:.2f}x |",
        f"| reward-model training, pairs/s | {two(pps['float32'], '{:.1f}')} | "
        f"{two(pps['bfloat16'], '{:.1f}')} | {ratio['reward model']:.2f}x |",
        f"| ... accuracy on 400 held-out pairs | "
        f"{two([x['accuracy'] for x in r['float32']], '{:.3f}')} | "
        f"{two([x['accuracy'] for x in r['bfloat16']], '{:.3f}')} | |",
        f"| policy fine-tuning, s/step | {two(sps['float32'], '{:.2f}')} | "
        f"{two(sps['bfloat16'], '{:.2f}')} | {ratio['fine-tune']:.2f}x |",
        f"| ... last step's loss | {two([x['loss_last'] for x in f['float32']], '{:.3f}')} | "
        f"{two([x['loss_last'] for x in f['bfloat16']], '{:.3f}')} | |",
        "",
        f"Greedy answers (T 0, 64 prompts) whose first 16 words agree between the dtypes: "
        f"{agree(s['float32'][0]['greedy'], s['bfloat16'][0]['greedy']):.2f}; between two "
        f"float32 engines: {agree(s['float32'][0]['greedy'], s['float32'][1]['greedy']):.2f}.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
