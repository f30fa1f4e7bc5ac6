"""The evaluate stage's wall time per standard suite: `evaluate_policy` end to end on the first
`--limit` items of each suite, with what it spent answering, labelling refusals, judging and
writing, and the time projected for the whole suite.

    .venv/bin/python benchmarks/bench_evaluate_suites.py [--limit 20]
        [--suites mt-bench alpaca-eval xstest advbench] [--probe 128]
        [--config deployments/demo.yaml] [--out PATH]

A fresh lake in a temporary folder, the demo config (its lake replaced by that folder): the
packaged SmolLM2-135M-Instruct as the base policy, answered through vLLM on the CPU, greedy,
with the demo's sampling settings (64 new tokens at most, its stop strings), refusals labelled
by the shipped classifier, pairs judged by the proxy judge. Each suite runs alone, three times:

- first: the base alone, every answer drawn; only AlpacaEval is judged (against
  gpt-3.5-turbo-0301's reference outputs), the other suites have no opponent;
- head to head: a candidate against the base, as the evaluate stage runs the suites each week
  (candidate against the policy it started from): the candidate's answers drawn, the base's
  read back from the first run, every suite judged. The candidate is the same weights recorded
  under their own policy id, so it shares the base's open engine (a fine-tuned candidate's
  engine is already open in the stage, which samples its held-out answers first); the engine's
  prefix cache is emptied before every call, since another model's engine has not seen the
  prompts (kept, it halves the CPU time of answering the same prompts again);
- rerun: the head-to-head run again, every answer read back: refusal labels, judging and
  writing only.

vLLM's rate depends on how many answers it runs at once, and a full suite is handed to it in
one call (it runs up to a few hundred answers at a time). So the projection of answering a full
suite divides the suite's tokens (its measured tokens per item times its size) by the tokens/s
of one larger batch: `--probe` AlpacaEval instructions answered at once after the suites.
Refusal labels, judging and writing scale linearly. CPU seconds (this process and the engine's,
all threads) are reported beside the wall seconds of answering and of each call: on a shared
machine they move less with other work.

The pieces are timed by wrapping the functions `flywheel.evaluation.run` calls (`converse`,
`refusal_labels`, `_judge`, the lake's `write`), so they add up to the `evaluate_policy` call
they belong to; "rest" is everything else in it (reading the suite's file, looking up earlier
answers, the summary's bootstrap intervals). The vLLM engine start, the refusal classifier's
and the judge's model loads happen once, before the suites, and are reported apart. The
projections are for the full suites (80 / 805 / 450 / 520 items), without the one-off starts.
Writes benchmarks/results/evaluate_suites.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from _machine import describe

import flywheel.evaluation.run as run
from flywheel.config import load_config
from flywheel.evaluation.judge import make_judge
from flywheel.evaluation.suites import SUITES, load_suite
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.policy.sampling import close_samplers
from flywheel.stages.common import current_policy, policy_path, sampler_for

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "evaluate_suites.md"
FULL = {"mt-bench": 80, "alpaca-eval": 805, "xstest": 450, "advbench": 520}
PIECES = ("answering", "refusal labels", "judging", "writing")
PHASES = ("first", "head to head", "rerun")


def cpu_seconds() -> float:
    """CPU time of this process and its children (the vLLM engine runs in one), all threads:
    less disturbed than wall time by other work on a shared machine."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


class Clock:
    """Wall seconds spent inside the wrapped functions since the last `reset` (and CPU seconds
    of the answering), and the tokens the sampler generated."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.seconds = dict.fromkeys(PIECES, 0.0)
        self.answering_cpu = 0.0
        self.tokens = 0

    def wrap(self, owner, name: str, piece: str):
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), cpu_seconds() if piece == "answering" else 0.0
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[piece] += time.perf_counter() - t0
                if piece == "answering":
                    self.answering_cpu += cpu_seconds() - c0

        setattr(owner, name, timed)

    def count_tokens(self, sampler):
        inner = sampler.generate

        def generate(*args, **kwargs):
            out = inner(*args, **kwargs)
            self.tokens += sum(g.token_count for group in out for g in group)
            return out

        sampler.generate = generate


def load() -> float:
    return os.getloadavg()[0]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def forget_prompts(sampler) -> None:
    """Empty vLLM's prefix cache (the transformers backend keeps none)."""
    if sampler.backend == "vllm":
        sampler.llm.reset_prefix_cache()


def setup(config: str, folder: str):
    """The demo config on a fresh lake holding the base policy and a candidate (the same
    weights under their own id, descended from the base)."""
    cfg = load_config(config, {"lake": folder})
    lake = Lake.open(cfg.lake, read_only=False)
    base = current_policy(cfg, lake)
    candidate = {"id": content_id("policy", "bench-candidate", cfg.models.policy),
                 "iteration": 1, "uri": base["uri"], "parent_id": base["id"],
                 "method": base["method"], "reward_model_id": None, "training_data": "{}",
                 "metrics": "{}"}
    lake.write("policies", [candidate], {"reason": "benchmark candidate"})
    return cfg, lake, base, candidate


def measure(cfg, lake, clock: Clock, judge, suite: str, limit: int, policy, against) -> dict:
    """One `evaluate_policy` call on one suite, its pieces and the load average around it."""
    clock.reset()
    before, cpu = load(), cpu_seconds()
    out, wall = timed(lambda: run.evaluate_policy(cfg, lake, policy, against, (suite,), limit,
                                                  judge, progress=False))
    s = out["suites"][suite]
    row = {"suite": suite, "items": s["items"], "sampled": s["sampled"], "wall": wall,
           "cpu": cpu_seconds() - cpu, **clock.seconds,
           "rest": wall - sum(clock.seconds.values()), "answering cpu": clock.answering_cpu,
           "tokens": clock.tokens, "load": (before, load()), "judged": bool(s["judge"])}
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}),
          flush=True)
    return row


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    ap.add_argument("--probe", type=int, default=128,
                    help="AlpacaEval instructions answered in one batch for the answering rate "
                         "the projection uses (0: scale the small runs linearly)")
    ap.add_argument("--config", default=str(ROOT / "deployments" / "demo.yaml"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    start_load = load()
    folder = tempfile.mkdtemp(prefix="bench-evaluate-suites-")
    cfg, lake, base, candidate = setup(args.config, folder)
    clock = Clock()
    once = {}
    sampler, once["vLLM engine start"] = timed(
        lambda: sampler_for(cfg, policy_path(lake, base)))
    clock.count_tokens(sampler)
    _, once["refusal classifier load (first call)"] = timed(
        lambda: run.refusal_labels(["I'm sorry, but I can't help with that."]))
    judge, once["proxy judge load"] = timed(lambda: make_judge("proxy", cfg, lake))
    for name, piece in (("converse", "answering"), ("refusal_labels", "refusal labels"),
                        ("_judge", "judging")):
        clock.wrap(run, name, piece)
    clock.wrap(lake, "write", "writing")
    results = {phase: [] for phase in PHASES}
    opponents = {"first": (base, None), "head to head": (candidate, base),
                 "rerun": (candidate, base)}
    for phase in PHASES:
        for suite in args.suites:
            forget_prompts(sampler)
            results[phase].append(measure(cfg, lake, clock, judge, suite, args.limit,
                                          *opponents[phase]))
    probe = None
    if args.probe:
        clock.reset()
        items = load_suite("alpaca-eval", cfg, args.probe)
        forget_prompts(sampler)
        before = load()
        _, secs = timed(lambda: run.converse(cfg, sampler, items))
        probe = {"items": len(items), "seconds": secs, "cpu": clock.answering_cpu,
                 "tokens": clock.tokens, "load": (before, load())}
        print(json.dumps({"probe": probe}), flush=True)
    close_samplers()
    turns = {s: sum(len(i.turns) for i in load_suite(s, cfg, args.limit)) for s in args.suites}
    lines = report(args, cfg, once, results, turns, probe, start_load)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def projected(r: dict, probe: dict | None) -> float:
    """Seconds for the full suite: answering at the probe's rate (linear without one), the rest
    linear in items."""
    full, n = FULL[r["suite"]], r["items"]
    answering = r["answering"] / n * full
    if probe and r["tokens"]:
        answering = r["tokens"] / n * full / (probe["tokens"] / probe["seconds"])
    return answering + (r["wall"] - r["answering"]) / n * full


def report(args, cfg, once: dict, results: dict, turns: dict, probe: dict | None,
           start_load: float) -> list[str]:
    s = cfg.sampling
    command = "`.venv/bin/python benchmarks/bench_evaluate_suites.py" + (
        f" --limit {args.limit}" if args.limit != 20 else "") + (
        f" --suites {' '.join(args.suites)}" if tuple(args.suites) != SUITES else "") + (
        f" --probe {args.probe}" if args.probe != 128 else "") + "`"
    lines = [
        "# The evaluate stage's time per standard suite (CPU)",
        "",
        f"Machine: {describe()}, shared with other work. Run {datetime.date.today().isoformat()}"
        f", commit {commit()}. Load average (1 min) at the start {start_load:.1f}, at the end "
        f"{load():.1f}; each row gives it before and after its measurement.",
        f"Command: {command}",
        "",
        f"Policy: {cfg.models.policy} through {s.backend} ({s.dtype}) on the CPU, greedy "
        f"(evaluation.temperature {cfg.evaluation.temperature}), at most {s.max_new_tokens} new "
        f"tokens, stop {json.dumps(s.stop)} (the demo config, {Path(args.config).name}); "
        f"refusals by the shipped classifier; judge: proxy ({cfg.models.judge_embedder}). "
        f"The first {args.limit} items of each suite (MT-bench: two turns each).",
        "",
        "Absolute times say what a 2-core CPU machine takes; a GPU serves these answers about "
        "100x faster, and the proxy judge and the refusal classifier (MiniLM) are faster there "
        "too.",
        "",
        "## Once per process",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in once.items()],
    ]
    if probe:
        lines += ["", f"Answering rate for the projections: {probe['items']} AlpacaEval "
                  f"instructions in one batch, {probe['tokens']} new tokens in "
                  f"{probe['seconds']:.1f} s ({probe['cpu']:.1f} CPU seconds), "
                  f"**{probe['tokens'] / probe['seconds']:.0f} tokens/s** (load "
                  f"{probe['load'][0]:.1f} / {probe['load'][1]:.1f})."]
    about = {
        "first": "the base alone, every answer drawn (only AlpacaEval judged: against its "
                 "reference outputs)",
        "head to head": "a candidate against the base, as the evaluate stage runs the suites: "
                        "the candidate's answers drawn, the base's read back, every suite "
                        "judged",
        "rerun": "the head-to-head run again, every answer read back",
    }
    for phase in PHASES:
        lines += ["", f"## {phase.capitalize()}: {about[phase]}", "",
                  "| suite | items | answers drawn | answering s | answering CPU s | tokens/s "
                  "| refusal labels s | judging s | writing s | rest s | evaluate_policy s "
                  "| its CPU s | s/item | full suite (projected) | load before / after |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results[phase]:
            drawn = " + ".join(str(v) for v in r["sampled"].values())
            rate = f"{r['tokens'] / r['answering']:.0f}" if r["tokens"] else "-"
            per = r["wall"] / r["items"]
            full = projected(r, probe)
            lines.append(
                f"| {r['suite']} | {r['items']} | {drawn} | {r['answering']:.1f} | "
                f"{r['answering cpu']:.1f} | {rate} | {r['refusal labels']:.1f} | "
                + (f"{r['judging']:.1f}" if r["judged"] else "-")
                + f" | {r['writing']:.1f} | {r['rest']:.1f} | {r['wall']:.1f} | "
                f"{r['cpu']:.1f} | {per:.2f} | "
                f"{minutes(full)} ({FULL[r['suite']]} items) | "
                f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    lines += ["", "## Seconds per item, by piece", "",
              "Answering and refusal labels from the first run; judging and writing from the "
              "head-to-head run (every suite judged there).", "",
              "| suite | answering | answering at the probe's rate | refusal labels | judging | "
              "writing | first run, full suite | head to head, full suite | rerun, full suite |",
              "|---|---|---|---|---|---|---|---|---|"]
    by = {phase: {r["suite"]: r for r in results[phase]} for phase in PHASES}
    for suite in args.suites:
        first, h2h, again = (by[p][suite] for p in PHASES)
        n = first["items"]
        fast = (f"{first['tokens'] / n / (probe['tokens'] / probe['seconds']):.2f}"
                if probe and first["tokens"] else "-")
        lines.append(
            f"| {suite} | {first['answering'] / n:.2f} | {fast} | "
            f"{first['refusal labels'] / n:.3f} | {h2h['judging'] / n:.3f} | "
            f"{h2h['writing'] / n:.3f} | "
            + " | ".join(minutes(projected(by[p][suite], probe)) for p in PHASES) + " |")
    demo = cfg.evaluation
    stage = sum(projected(by["head to head"][x], probe) / FULL[x]
                * min(demo.suite_limit or FULL[x], FULL[x])
                for x in demo.suites if x in by["head to head"])
    lines += [
        "",
        "Full-suite projections: answering at the probe's tokens/s"
        + ("" if probe else " (no probe in this run: scaled linearly, an overestimate)")
        + ", refusal labels, judging, writing and the rest scaled linearly from the items "
        "measured, without the one-off starts above. MT-bench answers two turns per item (the "
        "second after the policy's own first answer). Answers stop at "
        f"{s.max_new_tokens} new tokens: MT-bench and AlpacaEval are usually answered with "
        "hundreds, which multiplies the answering time. CPU s: this process's and the vLLM "
        "engine's CPU time, all threads; well below the wall seconds, the call waited, mostly "
        "for cores other work held. tokens/s: new tokens vLLM generated "
        f"per second of answering ({sum(turns.values())} turns in all at this limit).",
        "",
        f"The demo config's suites ({', '.join(demo.suites)}, first {demo.suite_limit} items "
        f"each), head to head as the stage runs them: about {stage:.0f} s a week at these rates"
        + (" (suites not measured here left out)."
           if not set(demo.suites) <= set(args.suites) else "."),
    ]
    return lines


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


if __name__ == "__main__":
    main()
