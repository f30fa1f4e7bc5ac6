"""Refusal classifier vs the regex: agreement with people on refuse vs comply.

On the hand-labelled answers (flywheel/data/refusal_labels.jsonl), k-fold cross-validation
grouped by prompt (no prompt's answers in both train and test): the head
(`flywheel.evaluation.refusal`) trained on the other folds against `REFUSAL_PATTERNS` alone.
Refuse = full or partial refusal. Reports agreement, precision and recall of "refuse", the same
by answer source and by XSTest prompt type, and the 3-class confusion matrix. Then leave one
source out: each source's answers labelled by a head trained on the other sources only, the
nearest this set has to a model whose style the head never saw.

    .venv/bin/python benchmarks/bench_refusal.py [--folds 5] [--seed 0] [--labels FILE]

--labels FILE scores the shipped head (and the regex) on another human-labelled set in XSTest's
v2 completions format (prompt, type, model, completion, final_label; CSV or JSON Lines), such as
XSTest's published human-labelled completions or a held-out set of the same shape.
Writes benchmarks/results/refusal.md (or refusal_<file stem>.md with --labels).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

from _machine import describe

from flywheel.evaluation.refusal import (
    LABELS,
    REFUSAL_PATTERNS,
    decide,
    features,
    refusal_labels,
)
from flywheel.evaluation.refusal_train import (
    cross_validate,
    leave_one_source_out,
    load_labels,
    read_xstest,
)

OUT = Path(__file__).parent / "results"


def refuses(label: str) -> bool:
    return label != "compliance"


def scores(truth: list[str], pred: list[bool]) -> tuple[float, float, float, int]:
    """(agreement, precision, recall of "refuse", n)."""
    t = [refuses(x) for x in truth]
    tp = sum(a and b for a, b in zip(t, pred))
    agree = sum(a == b for a, b in zip(t, pred)) / len(t)
    precision = tp / sum(pred) if sum(pred) else float("nan")
    recall = tp / sum(t) if sum(t) else float("nan")
    return agree, precision, recall, len(t)


def row(name: str, truth: list[str], regex: list[bool], head: list[bool]) -> str:
    r, h = scores(truth, regex), scores(truth, head)
    return (f"| {name} | {r[3]} | {sum(map(refuses, truth))} | {r[0]:.3f} | {r[1]:.2f} | "
            f"{r[2]:.2f} | **{h[0]:.3f}** | {h[1]:.2f} | {h[2]:.2f} |")


def table(examples, regex, head_labels, key) -> list[str]:
    lines = ["| subset | answers | refusals (people) | regex agreement | regex precision | "
             "regex recall | head agreement | head precision | head recall |",
             "|---|---|---|---|---|---|---|---|---|"]
    head = [refuses(x) for x in head_labels]
    groups = defaultdict(list)
    for i, e in enumerate(examples):
        if key(e):
            groups[key(e)].append(i)
    every = sorted(i for idx in groups.values() for i in idx)
    lines.append(row("all", [examples[i].label for i in every], [regex[i] for i in every],
                     [head[i] for i in every]))
    for name in sorted(groups):
        idx = groups[name]
        lines.append(row(name, [examples[i].label for i in idx], [regex[i] for i in idx],
                         [head[i] for i in idx]))
    return lines


def confusion(truth: list[str], pred: list[str]) -> list[str]:
    lines = ["| people \\ head | " + " | ".join(LABELS) + " |", "|---" * (len(LABELS) + 1) + "|"]
    for t in LABELS:
        counts = [sum(a == t and b == p for a, b in zip(truth, pred)) for p in LABELS]
        lines.append(f"| {t} | " + " | ".join(map(str, counts)) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", type=Path, help="another labelled set, XSTest's v2 format")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    unseen = None
    if args.labels:
        examples = read_xstest(args.labels)
        head_labels = refusal_labels([e.completion for e in examples])
        how = (f"The shipped head (flywheel/data/refusal_head.jsonl) on {args.labels.name}, "
               f"{len(examples)} answers labelled by people")
        out = OUT / f"refusal_{args.labels.stem}.md"
        command = f"--labels {args.labels}"
    else:
        examples = load_labels()
        x = features([e.completion for e in examples])
        texts = [e.completion for e in examples]
        head_labels = decide(cross_validate(examples, x, args.folds, args.seed), texts)
        unseen = decide(leave_one_source_out(examples, x, args.seed), texts)
        how = (f"{args.folds}-fold cross-validation grouped by prompt over the "
               f"{len(examples)} hand-labelled answers of flywheel/data/refusal_labels.jsonl "
               "(the head trained on the other folds; the regex needs no training)")
        out = OUT / "refusal.md"
        command = f"--folds {args.folds} --seed {args.seed}"
    seconds = time.perf_counter() - start
    regex = [bool(REFUSAL_PATTERNS.search(e.completion[:300])) for e in examples]
    truth = [e.label for e in examples]
    three_class = sum(a == b for a, b in zip(truth, head_labels)) / len(truth)

    text = [
        "# Refusal classifier vs the regex: agreement with people on refuse vs comply", "",
        f"Machine: {describe()} (shared with other work; load average {load_before:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end). {how}; {seconds:.0f} s including "
        "embedding.",
        f"Command: `.venv/bin/python benchmarks/bench_refusal.py {command}`", "",
        "Refuse = full or partial refusal (XSTest's definitions). Agreement = share of answers "
        "where the method and the people agree on refuse vs comply; precision and recall are of "
        "\"refuse\".", "",
        "## By answer source", "",
        *table(examples, regex, head_labels, lambda e: e.source), "",
        "## By XSTest prompt type (answers to XSTest's prompts only)", "",
        *table(examples, regex, head_labels, lambda e: e.type), "",
        "## Three classes: people (rows) against the head (columns)", "",
        *confusion(truth, head_labels), "",
        f"Three-class agreement: {three_class:.3f}.",
    ]
    if unseen is not None:
        text += [
            "", "## Leave one source out", "",
            "Each source's answers labelled by a head trained on the other sources' answers only "
            "(the regex as above).", "",
            *table(examples, regex, unseen, lambda e: e.source), "",
            "XSTest's prompts (SmolLM2's answers, the head trained without any SmolLM2 answer):",
            "", *table(examples, regex, unseen, lambda e: e.type)[:3], ""]
    out.write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))


if __name__ == "__main__":
    main()
