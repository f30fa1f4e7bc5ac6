"""The standard evaluation suites, read from the shared data folder (never copied into the
repository): MT-bench, AlpacaEval, XSTest and AdvBench, each as a list of `Item`s in the
suite's own order.

- `mt-bench`: 80 two-turn questions in 8 categories; math, reasoning and coding carry
  reference answers (GPT-4's, as FastChat's judge uses them, else the question's own).
- `alpaca-eval`: 805 instructions (their `input` appended) with gpt-3.5-turbo-0301's answers
  as the baseline a policy is judged against when it has no opponent.
- `xstest`: 250 safe prompts that look unsafe (must be answered) and 200 unsafe contrast
  prompts (must be refused); category is XSTest's type.
- `advbench`: 520 harmful behaviours (must be refused).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import FlywheelConfig
from flywheel.errors import DataError

SUITES = ("mt-bench", "alpaca-eval", "xstest", "advbench")
FILES = {
    "mt-bench": "mt_bench_questions.jsonl.gz",
    "mt-bench-reference": "mt_bench_reference_answers_gpt4.jsonl.gz",
    "alpaca-eval": "alpaca_eval_805_gpt-3.5-turbo-0301.jsonl.gz",
    "xstest": "xstest_prompts_450.jsonl.gz",
    "advbench": "advbench_harmful_behaviors_520.jsonl.gz",
}
# categories whose questions are judged with a reference answer (FastChat's NEED_REF_CATS)
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
ALPACA_BASELINE = "gpt-3.5-turbo-0301"


@dataclass(frozen=True)
class Item:
    suite: str
    item_id: str
    category: str
    turns: tuple[str, ...]  # the user turns, in order
    criterion: str = "helpfulness"  # helpfulness | safety
    expect: str = "answer"  # answer | refuse
    reference: tuple[str, ...] | None = None  # reference answers, one per turn
    baseline: str | None = None  # AlpacaEval's gpt-3.5-turbo-0301 answer


def data_dir(cfg: FlywheelConfig | None = None) -> Path:
    """The folder of the suites' files: the config's evaluation.data_dir, else $FLYWHEEL_DATA,
    else ../shared/data beside the checkout."""
    if cfg is not None and cfg.evaluation.data_dir:
        folder, source = Path(cfg.evaluation.data_dir), "evaluation.data_dir"
    elif os.environ.get("FLYWHEEL_DATA"):
        folder, source = Path(os.environ["FLYWHEEL_DATA"]), "FLYWHEEL_DATA"
    else:
        folder, source = Path(__file__).resolve().parents[2].parent / "shared" / "data", \
            "the default ../shared/data beside the checkout"
    if not folder.is_dir():
        raise DataError(f"no evaluation data folder at {folder} (from {source}); set "
                        "evaluation.data_dir in the config or FLYWHEEL_DATA to the folder "
                        "holding mt_bench_questions.jsonl.gz and the other suites' files")
    return folder


def _read(folder: Path, key: str) -> list[dict]:
    path = folder / FILES[key]
    if not path.is_file():
        raise DataError(f"{FILES[key]} is missing from {folder}; set evaluation.data_dir in "
                        "the config or FLYWHEEL_DATA to a folder that holds it, or put it in "
                        "../shared/data beside the checkout")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mt_bench(folder: Path) -> list[Item]:
    gpt4 = {r["question_id"]: r["choices"][0]["turns"]
            for r in _read(folder, "mt-bench-reference")}
    items = []
    for q in _read(folder, "mt-bench"):
        reference = None
        if q["category"] in REFERENCE_CATEGORIES:
            found = gpt4.get(q["question_id"]) or q.get("reference")
            reference = tuple(found) if found else None
        items.append(Item("mt-bench", str(q["question_id"]), q["category"], tuple(q["turns"]),
                          reference=reference))
    return items


def alpaca_eval(folder: Path) -> list[Item]:
    return [Item("alpaca-eval", str(i), r["dataset"],
                 (f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"],),
                 baseline=r["output"])
            for i, r in enumerate(_read(folder, "alpaca-eval"), 1)]


def xstest(folder: Path) -> list[Item]:
    return [Item("xstest", r["id"], r["type"], (r["prompt"],),
                 criterion="helpfulness" if r["label"] == "safe" else "safety",
                 expect="answer" if r["label"] == "safe" else "refuse")
            for r in _read(folder, "xstest")]


def advbench(folder: Path) -> list[Item]:
    return [Item("advbench", str(i), "harmful", (r["goal"],), criterion="safety",
                 expect="refuse")
            for i, r in enumerate(_read(folder, "advbench"), 1)]


LOADERS = {"mt-bench": mt_bench, "alpaca-eval": alpaca_eval, "xstest": xstest,
           "advbench": advbench}


def load_suite(name: str, cfg: FlywheelConfig | None = None, limit: int | None = None,
               folder: Path | None = None) -> list[Item]:
    """A suite's items in its own order; `limit`: the first N. XSTest's first N keep its mix
    of safe and unsafe prompts: the first round(N * 250/450) safe prompts and the first unsafe
    ones for the rest (at least one of each from N = 2), in file order."""
    if name not in LOADERS:
        raise DataError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    items = LOADERS[name](folder or data_dir(cfg))
    if limit is None or limit >= len(items):
        return items
    if name != "xstest":
        return items[:limit]
    safe = [i for i in items if i.expect == "answer"]
    n_safe = round(limit * len(safe) / len(items))
    if limit >= 2:
        n_safe = min(max(n_safe, 1), limit - 1)
    unsafe = [i for i in items if i.expect == "refuse"]
    keep = {i.item_id for i in safe[:n_safe] + unsafe[: limit - n_safe]}
    return [i for i in items if i.item_id in keep]
