"""Training the refusal head (`flywheel.evaluation.refusal`) from hand-labelled answers.

`flywheel/data/refusal_labels.jsonl` holds one row per answer, labelled by reading it (with its
prompt) against XSTest's definitions. SmolLM2-135M-Instruct's answers are the project's own
output and are stored with their text; other models' answers stay in the shared data folder
(`suites.data_dir`) and a row names them: `ref` = {file, row, field, turn} (turn "last": the
last Assistant turn of an HH-RLHF conversation, and the Human turn before it as the prompt).

    python -m flywheel.evaluation.refusal_train [--labels FILE] [--out FILE] [--seed 0]

rebuilds `flywheel/data/refusal_head.jsonl` (deterministic for a seed). `read_xstest` reads a
set in XSTest's v2 completions format (prompt, type, model, completion, final_label), CSV or
JSON Lines, so another human-labelled set can be scored the same way
(benchmarks/bench_refusal.py --labels FILE).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from flywheel.errors import DataError
from flywheel.evaluation.refusal import DATA, HEAD_FILE, LABELS, Head, features
from flywheel.evaluation.suites import data_dir

LABELS_FILE = DATA / "refusal_labels.jsonl"
WEIGHT_DECAY = 3e-4
# classes weighted by (n / (classes * count)) ** CLASS_WEIGHT_POWER: the square root of inverse
# frequency. Full inverse weights (power 1) made every twelfth answer near the partial refusals'
# few examples a partial refusal; under grouped cross-validation on 1,750 answers power 0.5
# agreed with people on refuse vs comply 0.918 against 0.913, and 0.910 against 0.905 on a
# source left out of training
CLASS_WEIGHT_POWER = 0.5
# XSTest's final_label values (and their plain names) -> ours
XSTEST_LABELS = {"1_full_compliance": "compliance", "2_full_refusal": "full_refusal",
                 "3_partial_refusal": "partial_refusal", "full_compliance": "compliance",
                 "compliance": "compliance", "full_refusal": "full_refusal",
                 "partial_refusal": "partial_refusal"}


@dataclass(frozen=True)
class Example:
    id: str
    source: str  # the model that wrote the answer
    prompt: str
    completion: str
    label: str  # one of LABELS
    type: str = ""  # XSTest's prompt type, where the prompt is XSTest's


def group_key(prompt: str) -> str:
    """Answers to the same prompt stay on one side of a cross-validation split."""
    return " ".join(prompt.lower().split())


def _hh_last_turns(text: str) -> tuple[str, str]:
    a = text.rfind("\n\nAssistant:")
    h = text.rfind("\n\nHuman:", 0, a)
    if a < 0 or h < 0:
        raise DataError("an HH-RLHF reference names a conversation without Human and "
                        "Assistant turns")
    return text[h + len("\n\nHuman:") : a].strip(), text[a + len("\n\nAssistant:") :].strip()


_PROMPT_FIELDS = ("prompt", "instruction", "goal")


def _resolve(ref: dict, rows: list[dict]) -> tuple[str, str]:
    """(prompt, answer) that a reference names."""
    try:
        row = rows[ref["row"]]
        if ref.get("turn") == "last":
            return _hh_last_turns(row[ref["field"]])
        prompt = next(row[f] for f in _PROMPT_FIELDS if f in row)
        return prompt, row[ref["field"]]
    except (IndexError, KeyError, StopIteration) as e:
        raise DataError(f"the refusal label reference {ref} does not resolve ({e!r}); the shared "
                        "data file differs from the one labelled: check it against "
                        "../shared/data/SOURCES.md") from e


def load_labels(path: Path = LABELS_FILE, folder: Path | None = None) -> list[Example]:
    """The labelled answers, with the referenced texts read from the shared data folder."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    files: dict[str, list[dict]] = {}
    examples = []
    for r in rows:
        if "label" not in r:
            continue  # the `about` row
        if "ref" in r:
            name = r["ref"]["file"]
            if name not in files:
                where = (folder or data_dir()) / name
                if not where.is_file():
                    raise DataError(f"{name} is missing from {where.parent}; set FLYWHEEL_DATA "
                                    "to the shared data folder that holds it")
                with gzip.open(where, "rt", encoding="utf-8") as f:
                    files[name] = [json.loads(line) for line in f if line.strip()]
            prompt, completion = _resolve(r["ref"], files[name])
        else:
            prompt, completion = r["prompt"], r["completion"]
        examples.append(Example(r["id"], r["source"], prompt, completion, r["label"],
                                r.get("type", "")))
    return examples


def read_xstest(path: Path) -> list[Example]:
    """A labelled set in XSTest's v2 completions format, CSV or JSON Lines."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(text.splitlines(keepends=True)))
    examples = []
    for i, r in enumerate(rows):
        missing = [c for c in ("prompt", "completion", "final_label") if c not in r]
        if missing:
            raise DataError(f"{path} row {i} lacks {missing}; XSTest's format has prompt, "
                            "type, model, completion and final_label columns")
        label = XSTEST_LABELS.get(str(r["final_label"]).strip())
        if label is None:
            raise DataError(f"{path} row {i}: final_label {r['final_label']!r} is not one of "
                            "1_full_compliance, 2_full_refusal, 3_partial_refusal")
        examples.append(Example(str(r.get("id", i)), str(r.get("model", "")), r["prompt"],
                                r["completion"] or "", label, r.get("type", "") or ""))
    return examples


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Each class's loss weight from the class indices `y`: (n / (classes * count)) **
    CLASS_WEIGHT_POWER."""
    counts = torch.bincount(y, minlength=len(LABELS)).float().clamp(min=1)
    return (len(y) / (len(LABELS) * counts)) ** CLASS_WEIGHT_POWER


def fit(x: torch.Tensor, labels: list[str], seed: int = 0,
        weight_decay: float = WEIGHT_DECAY) -> Head:
    """Multinomial logistic regression, classes weighted by the square root of their inverse
    counts (partial refusals are few; `CLASS_WEIGHT_POWER`), L2-penalised, fitted by L-BFGS: a
    convex problem, so the seed only fixes torch's state."""
    torch.manual_seed(seed)
    y = torch.tensor([LABELS.index(label) for label in labels])
    class_weight = class_weights(y)
    w = torch.zeros(len(LABELS), x.shape[1], requires_grad=True)
    b = torch.zeros(len(LABELS), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-7,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y, weight=class_weight)
        loss = loss + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Head(w.detach().clone(), b.detach().clone())


def folds(examples: list[Example], k: int, seed: int) -> list[int]:
    """A fold index per example; every prompt's answers share a fold."""
    groups = sorted({group_key(e.prompt) for e in examples})
    random.Random(seed).shuffle(groups)
    fold_of = {g: i % k for i, g in enumerate(groups)}
    return [fold_of[group_key(e.prompt)] for e in examples]


def cross_validate(examples: list[Example], x: torch.Tensor, k: int = 5, seed: int = 0,
                   weight_decay: float = WEIGHT_DECAY) -> list[str]:
    """Each example's label predicted by a head trained on the other folds."""
    fold = folds(examples, k, seed)
    return _held_out(examples, x, fold, seed, weight_decay)


def leave_one_source_out(examples: list[Example], x: torch.Tensor, seed: int = 0,
                         weight_decay: float = WEIGHT_DECAY) -> list[str]:
    """Each example's label predicted by a head trained on the other sources' answers only:
    how the head reads a model whose style it never saw."""
    sources = sorted({e.source for e in examples})
    return _held_out(examples, x, [sources.index(e.source) for e in examples], seed,
                     weight_decay)


def _held_out(examples, x, fold, seed, weight_decay) -> list[str]:
    labels = [e.label for e in examples]
    predicted = [""] * len(examples)
    for f in sorted(set(fold)):
        train = [i for i in range(len(examples)) if fold[i] != f]
        test = [i for i in range(len(examples)) if fold[i] == f]
        head = fit(x[train], [labels[i] for i in train], seed, weight_decay)
        for i, p in zip(test, head.predict(x[test])):
            predicted[i] = p
    return predicted


def train(labels: Path = LABELS_FILE, out: Path = HEAD_FILE, seed: int = 0) -> Head:
    examples = load_labels(labels)
    head = fit(features([e.completion for e in examples]), [e.label for e in examples], seed)
    head.save(out, {"labels": labels.name, "examples": len(examples), "seed": seed,
                    "weight_decay": WEIGHT_DECAY, "class_weight_power": CLASS_WEIGHT_POWER,
                    "model": "logistic regression on all-MiniLM-L6-v2 embeddings (opening, "
                             "whole answer) + refusal cues (opening, rest) + length"})
    return head


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=LABELS_FILE)
    parser.add_argument("--out", type=Path, default=HEAD_FILE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train(args.labels, args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
