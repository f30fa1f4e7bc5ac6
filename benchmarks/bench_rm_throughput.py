"""Reward-model training throughput: `train_reward_model` against a plain PyTorch loop over the
same backbone, pairs, batches and max length, side by side in one run.

    .venv/bin/python benchmarks/bench_rm_throughput.py [--backbone builtin:all-minilm-l6-v2]
        [--max-length 256] [--batch-size 16] [--steps 6] [--repeats 3] [--profile]
        [--threads N] [--out PATH]

Data: Anthropic HH-RLHF harmless pairs (../shared/data, the train split of
bench_reward_models.py), a seeded sample of `steps x batch-size` pairs, the same in every run.

The plain loop is written here, as one would write it without the library: AutoModel plus a
linear head, mean pooling over the attention mask, each step's chosen and rejected responses
tokenized together and padded to the step's longest, one forward and backward over all of
them, -log(sigmoid(r_chosen - r_rejected)), AdamW (0.9, 0.95), gradient clip 1.0. It reads the
same token sequences as the library (the conversation with role markers and the response,
flywheel/reward/text.py) and takes the same steps over the same batches (epoch_batches' order).

Both are timed end to end, from the backbone's folder to a trained model (loading, tokenizing,
the steps), alternately (plain, library, library, plain, ...) so that a change in the machine's
load falls on both. `--profile` adds variants of the library's loop that undo one change each
(see the table). Writes benchmarks/results/rm_throughput.md (or --out) with pairs/s per run,
the ratio within each repeat, and the load average.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import time
from pathlib import Path

import torch
from _machine import describe
from bench_reward_models import DATA, SETS, load_pairs, split

from flywheel.config import RewardModelConfig
from flywheel.models import load_tokenizer, resolve
from flywheel.reward import train as rm_train
from flywheel.reward.pooling import mean_rows
from flywheel.reward.text import marked_conversation
from flywheel.training import epoch_batches

OUT = Path(__file__).parent / "results" / "rm_throughput.md"


def plain_loop(backbone: str, pairs, batch_size: int, max_length: int, lr: float,
               seed: int) -> dict:
    """The plain PyTorch loop; returns its timings and token counts."""
    from transformers import AutoModel

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = AutoModel.from_pretrained(backbone, dtype=torch.float32)
    tok = load_tokenizer(backbone)
    tok.truncation_side = "left"
    head = torch.nn.Linear(model.config.hidden_size, 1)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    padded = real = 0
    for idx in epoch_batches(len(pairs), batch_size, 1, seed):
        batch = [pairs[i] for i in idx]
        prompts = [marked_conversation(p.messages) for p in batch] * 2
        responses = [p.chosen for p in batch] + [p.rejected for p in batch]
        enc = tok(prompts, responses, padding=True, truncation="longest_first",
                  max_length=max_length, return_tensors="pt")
        mask = enc["attention_mask"]
        hidden = model(input_ids=enc["input_ids"], attention_mask=mask).last_hidden_state
        r = head(mean_rows(hidden, mask)).squeeze(-1)
        n = len(batch)
        loss = -torch.nn.functional.logsigmoid(r[:n] - r[n:]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        padded += mask.numel()
        real += int(mask.sum())
    return {"seconds": time.perf_counter() - start, "padded": padded, "real": real}


def library_loop(backbone: str, pairs, cfg: RewardModelConfig, overhead: int) -> dict:
    """`train_reward_model` with `overhead` as the length-run cost (a huge one: one forward per
    micro-batch padded to its longest); counts the padded tokens it ran."""
    counted = {"padded": 0, "real": 0}
    pad = rm_train.RewardModel.pad

    def counting_pad(self, seqs, device=None):
        enc = pad(self, seqs, device)
        counted["padded"] += enc["attention_mask"].numel()
        counted["real"] += int(enc["attention_mask"].sum())
        return enc

    old_overhead = rm_train.CHUNK_OVERHEAD_TOKENS
    rm_train.CHUNK_OVERHEAD_TOKENS = overhead
    rm_train.RewardModel.pad = counting_pad
    try:
        start = time.perf_counter()
        _, metrics = rm_train.train_reward_model(backbone, pairs, cfg, desc="library loop")
        seconds = time.perf_counter() - start
    finally:
        rm_train.RewardModel.pad = pad
        rm_train.CHUNK_OVERHEAD_TOKENS = old_overhead
    return {"seconds": seconds, **counted, "step_s": metrics["seconds_per_step"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="builtin:all-minilm-l6-v2")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16, help="pairs a step")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps a run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--profile", action="store_true",
                    help="also the library loop without length runs, and in micro-batches of 8")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = resolve(args.backbone)
    train, _ = split(load_pairs(SETS["safety"], args.data)[0])
    pairs = random.Random(args.seed).sample(train, args.steps * args.batch_size)
    cfg = dict(learning_rate=args.lr, epochs=1, batch_size=args.batch_size,
               micro_batch_size=args.batch_size, max_length=args.max_length, margin="none",
               pooling="mean", seed=args.seed)
    variants = {
        "plain loop": lambda: plain_loop(backbone, pairs, args.batch_size, args.max_length,
                                         args.lr, args.seed),
        "library": lambda: library_loop(backbone, pairs, RewardModelConfig(**cfg),
                                        rm_train.CHUNK_OVERHEAD_TOKENS),
    }
    if args.profile:
        variants["library, one forward padded to the longest"] = lambda: library_loop(
            backbone, pairs, RewardModelConfig(**cfg), 10**9)
        variants["library, micro-batches of 8"] = lambda: library_loop(
            backbone, pairs, RewardModelConfig(**{**cfg, "micro_batch_size": 8}),
            rm_train.CHUNK_OVERHEAD_TOKENS)
    load_start, started = os.getloadavg(), datetime.datetime.now().astimezone()
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            res = variants[name]()
            res["load"] = os.getloadavg()[0]
            runs[name].append(res)
            print(f"repeat {r + 1} {name}: {len(pairs) / res['seconds']:.2f} pairs/s "
                  f"({res['seconds']:.1f} s, {res['padded']} padded tokens, load "
                  f"{res['load']:.1f})", flush=True)
    load_end = os.getloadavg()
    write(args, pairs, runs, started, load_start, load_end)


def write(args, pairs, runs, started, load_start, load_end):
    n = len(pairs)
    base = runs["plain loop"]
    lines = [
        "# Reward-model training throughput: the library's loop against a plain PyTorch loop",
        "",
        f"Machine: {describe()}. Date: {started:%Y-%m-%d %H:%M %Z}. 1-minute load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end (5-minute "
        f"{load_start[1]:.1f} / {load_end[1]:.1f}); torch threads {torch.get_num_threads()}.",
        f"Command: `.venv/bin/python benchmarks/bench_rm_throughput.py --backbone "
        f"{args.backbone} --max-length {args.max_length} --batch-size {args.batch_size} "
        f"--steps {args.steps} --repeats {args.repeats}{' --profile' if args.profile else ''}"
        f"{f' --threads {args.threads}' if args.threads else ''}`",
        "",
        f"{n} HH-RLHF harmless pairs, {args.batch_size} a step, {args.steps} steps, max length "
        f"{args.max_length}, mean pooling, float32; each run timed end to end (model load, "
        "tokenization, the steps), the variants alternating within each repeat. Ratio: the "
        "variant's pairs/s over the plain loop's in the same repeat.",
        "",
        "| variant | pairs/s per repeat | median pairs/s | ratio to plain per repeat | "
        "median ratio | padded tokens a run (real) | load during the runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in runs.items():
        rates = [n / x["seconds"] for x in res]
        ratios = [b["seconds"] / x["seconds"] for b, x in zip(base, res)]
        loads = ", ".join(f"{x['load']:.1f}" for x in res)
        lines.append(
            f"| {name} | {', '.join(f'{v:.2f}' for v in rates)} | "
            f"**{statistics.median(rates):.2f}** | {', '.join(f'{v:.2f}' for v in ratios)} | "
            f"**{statistics.median(ratios):.2f}** | {res[0]['padded']:,} ({res[0]['real']:,}) | "
            f"{loads} |")
    lines += ["", NOTES]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


NOTES = """## Notes

(written after the run)
"""

if __name__ == "__main__":
    main()
