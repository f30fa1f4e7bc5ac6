"""`flywheel leaderboard`: every policy in the lake on one rating scale."""

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


def leaderboard(*, judge: Annotated[str | None, Parameter(
                    help="only this judge's verdicts: its key, as the evaluations table "
                    "records it (default: every judge's)")] = None,
                suite: Annotated[str | None, Parameter(
                    help="only this suite's items: mt-bench, alpaca-eval, xstest, advbench "
                    "or heldout (default: all)")] = None,
                config: ConfigOpt = None, lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """Policies ranked by Bradley-Terry ratings (Elo scale, 1000 the average) over every judged
    pair in the lake, with 95 % bootstrap intervals over resampled games.

    Example: flywheel leaderboard --suite alpaca-eval
    """
    from flywheel.evaluation import leaderboard as board

    cfg = load(config, lake)
    rows = board.leaderboard(existing_lake(cfg.lake, read_only=True), judge, suite,
                             n=cfg.evaluation.bootstrap)
    if json:
        print_json(rows)
    else:
        print(board.leaderboard_markdown(rows), end="")
    return 0
