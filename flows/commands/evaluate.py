"""`flywheel evaluate`: a policy on the standard suites (`flywheel evaluate-rm`, a reward
model on a comparison file, is in reward.py)."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from flywheel.flows.commands.common import (
    ConfigOpt,
    JsonOpt,
    LakeOpt,
    existing_lake,
    load,
    print_json,
)


def evaluate(policy: Annotated[str, Parameter(
                 help="a policy id in the lake (a unique prefix is enough), or base (the "
                 "lineage root)")], /, *,
             against: Annotated[str | None, Parameter(
                 help="a second policy to judge it against, or base; without one only "
                 "AlpacaEval is judged, against gpt-3.5-turbo-0301's reference outputs")] = None,
             suite: Annotated[str, Parameter(
                 help="comma-separated suites: mt-bench, alpaca-eval, xstest, advbench")] =
             "mt-bench,alpaca-eval,xstest,advbench",
             limit: Annotated[int | None, Parameter(
                 help="the first N items of each suite (XSTest: safe and unsafe in "
                 "proportion)")] = None,
             judge: Annotated[str | None, Parameter(
                 help="proxy, reward-model[:ID] or llm (default: the config's "
                 "evaluation.judge)")] = None,
             config: ConfigOpt = None, lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """A policy on the standard suites: win rates, refusal and compliance rates with 95 %
    intervals.

    Answers are greedy and recorded in the lake's `evaluations` table, one row per item; a
    policy's earlier answers under the same sampling settings are reused.

    Example: flywheel evaluate 7c1e0a --against base --suite mt-bench,xstest --limit 20
    """
    from flywheel.evaluation.run import evaluate_policy
    from flywheel.evaluation.summary import format_table

    cfg = load(config, lake)
    result = evaluate_policy(cfg, existing_lake(cfg.lake), policy, against,
                             [s.strip() for s in suite.split(",") if s.strip()], limit,
                             judge)
    if json:
        print_json(result)
    else:
        print(format_table(result))
    return 0
