"""A rejection-sampling fine-tuning step, as it was and as it is, side by side in one run.

    .venv/bin/python benchmarks/bench_finetune_step.py [--policy builtin:smollm2-135m-instruct]
        [--steps 6] [--repeats 3] [--batch-size 8] [--max-new-tokens 96] [--out PATH]

Data: AlpacaEval's instructions with their reference answers (../shared/data), each answer cut
to `--max-new-tokens` tokens as rejection sampling's are, in the policy's chat template
(`tokenize_sft`): a seeded sample of `steps x batch-size` examples, the same for every variant.

Three variants of one optimizer step (one forward and backward over the step's examples in one
micro-batch, gradient clip 1.0, AdamW (0.9, 0.95), bfloat16 autocast where the CPU computes it
natively, as `precision: auto`):

- before: torch's AdamW looping over the parameters, the vocabulary's logits at every position;
- fused: AdamW as one fused kernel (`flywheel.training.fused_adamw_fits`), logits everywhere;
- now: fused AdamW and logits only from the first response token's predecessor on
  (`flywheel.policy.finetune.response_loss` with trim), what `finetune` runs.

Each variant starts from the same weights; the variants run alternately within each repeat
(before, fused, now, then now, fused, before, ...) so a change in the machine's load falls on
all. Writes benchmarks/results/finetune_step.md (or --out): seconds per step per repeat, the
ratio to `before` within each repeat, and the load average.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch
from _machine import describe

from flywheel.devices import native_bf16
from flywheel.models import load_causal_lm, load_tokenizer, resolve
from flywheel.policy.finetune import response_loss, tokenize_sft
from flywheel.training import fused_adamw_fits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPACA = "alpaca_eval_805_gpt-3.5-turbo-0301.jsonl.gz"
VARIANTS = {"before": (False, False), "fused": (True, False), "now": (True, True)}


def examples(tok, n: int, max_new_tokens: int, seed: int) -> list[tuple[list[int], list[int]]]:
    path = Path(os.environ.get("FLYWHEEL_DATA", DATA)) / ALPACA
    if not path.is_file():
        raise SystemExit(f"{path} is missing: set FLYWHEEL_DATA to the shared data folder")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    random.Random(seed).shuffle(rows)
    out = []
    for r in rows[:n]:
        cut = tok.decode(tok(r["output"], add_special_tokens=False)["input_ids"][:max_new_tokens])
        out.append(tokenize_sft(tok, [{"role": "user", "content": r["instruction"]}], cut, 512))
    return out


def run(model, state, data, batch_size, fused, trim, pad, precision) -> tuple[float, float]:
    """Seconds per step of `len(data) / batch_size` steps from the weights in `state`, and of
    that the optimizer's (clip and update)."""
    model.load_state_dict(state)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=(fused and fused_adamw_fits(params)) or None)
    steps = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
    start, in_opt = time.perf_counter(), 0.0
    for step in steps:
        items = sorted(step, key=lambda e: len(e[0]))
        tokens = sum(1 for _, lab in items for x in lab[1:] if x != -100)
        loss = response_loss(model, items, pad, torch.device("cpu"), precision, trim) / tokens
        loss.backward()
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        in_opt += time.perf_counter() - t
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(steps), in_opt / len(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "finetune_step.md")
    args = ap.parse_args()
    path = resolve(args.policy)
    tok = load_tokenizer(path)
    model = load_causal_lm(path, "float32")
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = examples(tok, args.steps * args.batch_size, args.max_new_tokens, args.seed)
    precision, cpu = "auto", torch.device("cpu")
    load_start = os.getloadavg()[0]
    run(model, state, data[: args.batch_size], args.batch_size, True, True, tok.pad_token_id,
        precision)  # warm-up: first-call allocations and kernel selection
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    opt_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(args.repeats):
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for v in order:
            fused, trim = VARIANTS[v]
            step_s, opt_s = run(model, state, data, args.batch_size, fused, trim,
                                tok.pad_token_id, precision)
            times[v].append(step_s)
            opt_times[v].append(opt_s)
            print(f"repeat {rep + 1} {v}: {step_s:.2f} s/step ({opt_s:.2f} optimizer)",
                  flush=True)
    load_end = os.getloadavg()[0]
    n_tokens = [len(ids) for ids, _ in data]
    n_prompt = [next(i for i, x in enumerate(lab) if x != -100) for _, lab in data]
    lines = [
        "# A rejection-sampling fine-tuning step: before, fused AdamW, and logits on the "
        "responses only",
        "",
        f"Machine: {describe()}. Date {datetime.date.today()}. Load average (1 min) "
        f"{load_start:.1f} at the start, {load_end:.1f} at the end.",
        f"Command: `.venv/bin/python benchmarks/bench_finetune_step.py --policy {args.policy} "
        f"--steps {args.steps} --repeats {args.repeats} --batch-size {args.batch_size} "
        f"--max-new-tokens {args.max_new_tokens}`",
        "",
        f"{len(data)} AlpacaEval instructions with reference answers cut to "
        f"{args.max_new_tokens} tokens; sequences of {min(n_tokens)}-{max(n_tokens)} tokens "
        f"(mean {statistics.fmean(n_tokens):.0f}), of which the prompt in the chat template "
        f"{statistics.fmean(n_prompt):.0f} on average; {args.batch_size} a step in one "
        f"micro-batch; autocast {'bfloat16' if native_bf16(cpu) else 'off (float32)'}.",
        "",
        "| repeat | " + " | ".join(f"{v} (s/step)" for v in VARIANTS)
        + " | " + " | ".join(f"{v} / before" for v in list(VARIANTS)[1:]) + " |",
        "|---" * (2 * len(VARIANTS)) + "|",
    ]
    for rep in range(args.repeats):
        row = [times[v][rep] for v in VARIANTS]
        lines.append(f"| {rep + 1} | " + " | ".join(f"{t:.2f}" for t in row) + " | "
                     + " | ".join(f"{t / row[0]:.2f}" for t in row[1:]) + " |")
    med = {v: statistics.median(times[v]) for v in VARIANTS}
    lines.append("| median | " + " | ".join(f"{med[v]:.2f}" for v in VARIANTS) + " | "
                 + " | ".join(f"{med[v] / med['before']:.2f}" for v in list(VARIANTS)[1:])
                 + " |")
    lines += ["", "Of each step, the optimizer's (gradient clip and AdamW update), median over the "
              "repeats: " + ", ".join(f"{v} {statistics.median(opt_times[v]):.2f} s"
                                      for v in VARIANTS) + "."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
