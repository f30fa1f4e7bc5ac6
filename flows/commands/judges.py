"""`flywheel judge-agreement`: how often a judge agrees with labelled comparisons
(flywheel/evaluation/agreement.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter, validators

from flywheel.flows.commands.common import (
    ConfigOpt,
    JsonOpt,
    LakeOpt,
    existing_lake,
    load,
    print_json,
)
from flywheel.flows.commands.where import find_config, find_lake


def judge_agreement(*files: Annotated[str, Parameter(
                        help="comparison files: Anthropic HH-RLHF, UltraFeedback binarized, or a "
                        "delivery in the Llama 2 protocol (default: the three HH-RLHF test files "
                        "of the evaluation data folder)")],
                    judge: Annotated[str | None, Parameter(
                        help="proxy, reward-model (the lake's promoted ones), reward-model:ID or "
                        ":FOLDER, or llm (default: the config's evaluation.judge)")] = None,
                    limit: Annotated[int | None, Parameter(
                        validator=validators.Number(gte=1),
                        help="the first N usable pairs of each file")] = None,
                    format: Annotated[Literal["hh-rlhf", "ultrafeedback", "llama2"] | None,
                                      Parameter(help="default: what the file name says, "
                                                "else llama2")] = None,
                    criterion: Annotated[Literal["helpfulness", "safety"] | None, Parameter(
                        help="of HH-RLHF files whose name says neither helpful nor "
                        "harmless")] = None,
                    max_turns: Annotated[int | None, Parameter(
                        validator=validators.Number(gte=1),
                        help="leave out pairs with more user turns (default: 2 for the llm "
                        "judge, whose MT-bench prompts cover one or two; else none)")] = None,
                    seed: Annotated[int, Parameter(
                        help="which pairs show the preferred answer first")] = 0,
                    config: ConfigOpt = None, lake: LakeOpt = None,
                    json: JsonOpt = False) -> int:
    """A judge's agreement with labelled comparisons, with 95 % bootstrap intervals.

    Agreement (ties count half), agreement on the pairs it decided and its tie rate, and the
    rate at which its verdict flips with the order of the answers: overall, per criterion
    and per file. The preferred answer is shown first in half of the pairs. When a lake is
    named, the result is recorded in its judge_agreement table for the iteration report.

    Example: flywheel judge-agreement --judge proxy --limit 200
    """
    from flywheel.evaluation.agreement import HH_TEST_FILES, measure, read_comparisons, record
    from flywheel.evaluation.judge import make_judge
    from flywheel.evaluation.suites import data_dir

    cfg = load(config, lake, need_lake=False)
    named = find_lake(lake, find_config(config),
                      cfg.lake if "lake" in cfg.model_fields_set else None)
    target = existing_lake(named.value) if named else None
    paths = list(files) or [str(data_dir(cfg) / name) for name in HH_TEST_FILES]
    spec = judge or cfg.evaluation.judge
    if max_turns is None and spec.partition(":")[0] == "llm":
        max_turns = 2
    comparisons = [read_comparisons(p, format, criterion, limit, max_turns) for p in paths]
    result = measure(make_judge(spec, cfg, target), comparisons, seed, cfg.evaluation.bootstrap)
    if target is not None:
        result["recorded"] = record(target, result)["id"]
    if json:
        print_json(result)
    else:
        print(format_agreement(result))
        if target is None:
            print("not recorded: no lake named (--lake, FLYWHEEL_LAKE or the config)",
                  file=sys.stderr)
    return 0


def _pct(value, interval) -> str:
    if value is None:
        return "-"
    ci = f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else ""
    return f"{100 * value:.1f}{ci}"


def format_agreement(result: dict) -> str:
    """The result as a table: one line overall, per criterion and per file, in %."""
    head = ("", "pairs", "agreement", "without ties", "ties", "flips", "side a")
    lines = [("all", result), *result["by_criterion"].items(),
             *((Path(name).name, part) for name, part in result["by_file"].items())]
    rows = [head] + [(name, f"{r['pairs']:,}", _pct(r["agreement"], r["agreement_ci"]),
                      _pct(r["agreement_no_ties"], r["agreement_no_ties_ci"]),
                      _pct(r["tie_rate"], r["tie_rate_ci"]),
                      _pct(r["flip_rate"], r["flip_rate_ci"]),
                      _pct(r["side_a_rate"], r["side_a_rate_ci"])) for name, r in lines]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    table = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in rows]
    notes = [f"judge {result['judge']}; labelled by {'; '.join(result['labelled_by'])}; "
             f"in % with 95 % bootstrap intervals; seed {result['seed']}"]
    for name, part in result["by_file"].items():
        if part["skipped"]:
            left = ", ".join(f"{k} {v}" for k, v in sorted(part["skipped"].items()))
            notes.append(f"{name}: left out {left}")
    if "recorded" in result:
        notes.append(f"recorded as judge_agreement {result['recorded']}")
    return "\n".join(notes[:1] + table + notes[1:])
