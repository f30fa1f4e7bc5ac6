"""How far to trust each judge: agreement with people's choices on Anthropic HH-RLHF, on a CPU.

    .venv/bin/python benchmarks/bench_judges.py [--train-limit N] [--test-limit N]
        [--max-length 64] [--epochs 1] [--lr 5e-5] [--threads N] [--seed 0]
        [--llm] [--llm-pairs 20] [--llm-max-tokens 256] [--out PATH]

Data: the three HH-RLHF test files of ../shared/data (helpful-base and helpful-online:
helpfulness; harmless-base: safety), read by `flywheel.evaluation.agreement.read_comparisons`.
The judges, side by side on the same pairs (`agreement.measure`: the preferred answer first in
half of the pairs, 95 % bootstrap intervals):

- proxy: MiniLM relevance and the refusal check (`flywheel.evaluation.proxy`);
- reward-model: a helpfulness and a safety reward model trained here the way
  benchmarks/bench_reward_models.py trains them (MiniLM backbone, `train_reward_model`, the same
  deterministic 80/20 split by the md5 of the first human turn), judging through
  `RewardModelJudge`; only the held-out fifth is judged, never a pair trained on
  (`--train-limit`: a seeded sample of the train split, to fit a shared CPU's time);
- llm (`--llm`): SmolLM2-135M-Instruct behind its own `vllm serve` (the CPU build's
  `python -m vllm.entrypoints.openai.api_server`), through `LLMJudge` with MT-bench's pairwise
  prompts in both orders, on the first `--llm-pairs` held-out pairs of each file with one or
  two user turns (MT-bench's prompts cover no more), the other two judges again beside it on
  those same pairs.

Writes benchmarks/results/judges.md (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import describe
from bench_reward_models import SETS, held_out
from bench_reward_models import load_pairs as load_train_pairs
from bench_reward_models import split as split_pairs

from flywheel import models
from flywheel.config import FlywheelConfig, RewardModelConfig
from flywheel.config.evaluation import LLMJudgeConfig
from flywheel.evaluation.agreement import HH_TEST_FILES, Comparisons, measure, read_comparisons
from flywheel.evaluation.judge import make_judge
from flywheel.evaluation.reward_judge import RewardModelJudge
from flywheel.reward.model import PreferencePair
from flywheel.reward.train import train_reward_model

OUT = Path(__file__).parent / "results" / "judges.md"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def held_out_comparisons(data: Path, limit: int | None) -> list[Comparisons]:
    """Each HH file's pairs of the held-out split (none of them trained on)."""
    out = []
    for name in HH_TEST_FILES:
        c = read_comparisons(str(data / name))
        keep = [p for p in c.pairs if held_out(PreferencePair(
            [{"role": "user", "content": p.prompt[0]}], "", ""))]
        out.append(Comparisons(c.source, c.labelled_by, keep[:limit], c.skipped))
    return out


def train_judge(args, cfg: FlywheelConfig, folder: Path) -> tuple[RewardModelJudge, dict]:
    backbone = models.resolve(args.backbone)
    rm_cfg = RewardModelConfig(learning_rate=args.lr, epochs=args.epochs, batch_size=8,
                               micro_batch_size=8, max_length=args.max_length, margin="none",
                               seed=args.seed)
    folders, info = {}, {}
    for kind, files in SETS.items():
        train, _ = split_pairs(load_train_pairs(files, args.data)[0])
        if args.train_limit:
            train = random.Random(args.seed).sample(train, min(args.train_limit, len(train)))
        t0 = time.perf_counter()
        model, metrics = train_reward_model(backbone, train, rm_cfg, desc=f"{kind} RM")
        info[kind] = {"pairs": len(train), "seconds": time.perf_counter() - t0, **metrics}
        print(f"{kind} RM: {len(train)} pairs in {info[kind]['seconds']:.0f} s", flush=True)
        folders[kind] = str(folder / kind)
        model.save(folders[kind], {"kind": kind, "max_length": args.max_length})
        del model
    key = f"reward-model:bench-minilm-{info['helpfulness']['pairs']}+{info['safety']['pairs']}"
    return RewardModelJudge(folders, key, cfg), info


def timed(judge, comparisons, args) -> dict:
    t0 = time.perf_counter()
    result = measure(judge, comparisons, args.seed, args.bootstrap)
    result["seconds"] = time.perf_counter() - t0
    print(f"{judge.key}: agreement {result['agreement']:.3f} on {result['pairs']} pairs in "
          f"{result['seconds']:.0f} s", flush=True)
    return result


def serve_smollm(home: Path):
    """vLLM's OpenAI-compatible server for SmolLM2-135M-Instruct on port 8917; (process, url)
    once /health answers."""
    import httpx

    model = models.resolve("builtin:smollm2-135m-instruct")
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", "smollm2-135m-instruct", "--dtype", "bfloat16",
            "--max-model-len", "4096", "--enforce-eager", "--host", "127.0.0.1",
            "--port", "8917"]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", **os.environ}
    log = open(home / "vllm.log", "ab")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited; see {home / 'vllm.log'}")
        try:
            if httpx.get("http://127.0.0.1:8917/health", timeout=2).status_code == 200:
                return proc, "http://127.0.0.1:8917/v1"
        except httpx.HTTPError:
            pass
        time.sleep(2)
    proc.terminate()
    raise RuntimeError("vllm serve did not answer /health in 10 minutes")


def short_pairs(comparisons: list[Comparisons], n: int) -> list[Comparisons]:
    """The first n pairs of each file with one or two user turns (MT-bench's prompts)."""
    return [Comparisons(c.source, c.labelled_by, [p for p in c.pairs if len(p.prompt) <= 2][:n])
            for c in comparisons]


def llm_judged(args, cfg, short: list[Comparisons]) -> dict:
    """The LLM judge's agreement on `short`, behind a `vllm serve` of its own."""
    from flywheel.evaluation.llm_judge import LLMJudge, load_templates
    from flywheel.evaluation.suites import data_dir

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = serve_smollm(Path(tmp))
        try:
            settings = LLMJudgeConfig(max_tokens=args.llm_max_tokens, concurrency=4)
            llm = LLMJudge(url, None, load_templates(data_dir(cfg)), settings)
            result = timed(llm, short, args)
            result["stats"] = llm.last_stats
        finally:
            proc.terminate()
            proc.wait(60)
    return result


SETTINGS = ("backbone", "train_limit", "test_limit", "max_length", "epochs", "lr", "bootstrap",
            "seed", "llm_pairs", "llm_max_tokens")


def load_store(args) -> dict:
    """Results saved by an earlier run with the same settings (--resume), else none."""
    path = args.out.with_suffix(".json")
    settings = {k: getattr(args, k) for k in SETTINGS}
    if not (args.resume and path.is_file()):
        return {"settings": settings, "all": {}, "llm": {}}
    store = json.loads(path.read_text())
    if store["settings"] != settings:
        raise SystemExit(f"{path} was saved with other settings ({store['settings']}); run "
                         "without --resume")
    return store


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="builtin:all-minilm-l6-v2")
    ap.add_argument("--train-limit", type=int, default=None,
                    help="train each RM on a seeded sample of this many pairs (default: all)")
    ap.add_argument("--test-limit", type=int, default=None,
                    help="judge the first N held-out pairs of each file (default: all)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llm", action="store_true", help="add SmolLM2 behind vllm serve")
    ap.add_argument("--llm-pairs", type=int, default=20, help="short held-out pairs per file")
    ap.add_argument("--llm-max-tokens", type=int, default=256)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--resume", action="store_true",
                    help="reuse the judges' results saved beside --out (.json) by a run with "
                    "the same settings; measure only the missing ones")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_start = datetime.datetime.now().astimezone(), os.getloadavg()
    cfg = FlywheelConfig()
    comparisons = held_out_comparisons(args.data, args.test_limit)
    store = load_store(args)
    saved = args.out.with_suffix(".json")
    short = short_pairs(comparisons, args.llm_pairs)

    def run(part, name, judged):
        if name not in store[part]:
            store[part][name] = judged()
            saved.parent.mkdir(exist_ok=True)
            saved.write_text(json.dumps(store, indent=1))
        return store[part][name]

    with tempfile.TemporaryDirectory() as tmp:
        rm = []  # trained on first use

        def rm_judge():
            if not rm:
                judge, store["training"] = train_judge(args, cfg, Path(tmp))
                rm.append(judge)
            return rm[0]

        run("all", "reward-model", lambda: timed(rm_judge(), comparisons, args))
        if args.llm:
            run("llm", "llm", lambda: llm_judged(args, cfg, short))
            run("llm", "reward-model", lambda: timed(rm_judge(), short, args))
    proxy = None
    for part, pairs in [("all", comparisons)] + ([("llm", short)] if args.llm else []):
        if "proxy" not in store[part]:
            proxy = proxy or make_judge("proxy", cfg)
        run(part, "proxy", lambda: timed(proxy, pairs, args))  # noqa: B023 (called at once)
    order = ("proxy", "reward-model", "llm")
    results = {k: store["all"][k] for k in order if k in store["all"]}
    llm = ({k: store["llm"][k] for k in order if k in store["llm"]},
           sum(len(c.pairs) for c in short)) if args.llm else None
    training = store["training"]
    write(args, started, load_start, os.getloadavg(), comparisons, training, results, llm)


def _pct(r: dict, name: str) -> str:
    value, ci = r[name], r[f"{name}_ci"]
    if value is None:
        return "-"
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else \
        f"{100 * value:.1f}"


def table(results: dict[str, dict]) -> list[str]:
    lines = ["| judge | key | part | pairs | **agreement** | without ties | ties | flips | "
             "side a | time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for part, x in [("all", r), *r["by_criterion"].items()]:
            first = part == "all"
            cells = [name if first else "", f"`{r['judge']}`" if first else "", part,
                     f"{x['pairs']:,}", f"**{_pct(x, 'agreement')}**",
                     *(_pct(x, k) for k in ("agreement_no_ties", "tie_rate", "flip_rate",
                                            "side_a_rate")),
                     f"{r['seconds'] / 60:.1f} min" if first else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def write(args, started, load_start, load_end, comparisons, training, results, llm):
    argv = " ".join(sys.argv[1:])
    lines = [
        "# How far to trust each judge: agreement with people on Anthropic HH-RLHF",
        "",
        f"Machine: {describe()}. Date: {started:%Y-%m-%d %H:%M %Z}. 1-minute load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end (2 cores shared with "
        "other jobs: above 2, other processes took CPU time from this run, so times are upper "
        "bounds).",
        f"Command: `.venv/bin/python benchmarks/bench_judges.py {argv}`" + (
            " (--resume: the judges measured by an earlier run with these settings were taken "
            f"from {args.out.with_suffix('.json').name}, their times included)"
            if args.resume else ""),
        "",
        "Pairs: the held-out fifth of each HH-RLHF test file (md5 of the first human turn, as "
        "benchmarks/bench_reward_models.py splits), the answer people chose shown first in half "
        f"of them (seed {args.seed}). In %, with 95 % bootstrap intervals ({args.bootstrap} "
        "resamples). Agreement counts a tie half; *without ties* is over the pairs the judge "
        "decided; *side a* is the share of decided verdicts for the answer shown first (50 % "
        "for a judge with no position preference).",
        "",
        "| file | held-out pairs judged |", "|---|---|",
        *[f"| `{c.source}` | {len(c.pairs):,} |" for c in comparisons],
        "",
        *table(results),
        "",
        f"Reward models: `{args.backbone}` backbone, {args.max_length} tokens, {args.epochs} "
        f"epoch(s), max lr {args.lr:g}, 8 pairs a step, margin table none (HH has no "
        "strengths); trained on the train split (never judged here): " + "; ".join(
            f"{k} {v['pairs']:,} pairs in {v['seconds'] / 60:.1f} min (loss {v['loss_first']:.3f}"
            f" -> {v['loss_last']:.3f})" for k, v in training.items()) + ".",
    ]
    if llm:
        results_llm, n = llm
        stats = results_llm["llm"]["stats"]
        lines += [
            "",
            f"## With the LLM judge ({n} pairs)",
            "",
            f"SmolLM2-135M-Instruct behind `vllm serve` (CPU build, bfloat16), MT-bench's "
            f"pairwise prompts in both orders at temperature 0, max {args.llm_max_tokens} tokens "
            f"a verdict; the first {args.llm_pairs} held-out pairs of each file with one or two "
            f"user turns. Requests {stats.get('requests')}, verdicts with no [[A]]/[[B]]/[[C]] "
            f"{stats.get('unparsed')}. The other judges again on the same pairs:",
            "",
            *table(results_llm),
        ]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
