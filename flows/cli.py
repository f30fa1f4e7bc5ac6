"""The `flywheel` command line: one cyclopts app over the command modules of flows/commands/.

`main(argv)` runs one command and returns its exit status: 0 done, 1 a batch with nothing
accepted, 2 a usage error or an error from input, config or environment (a FlywheelError),
printed as one line naming the fix, without a traceback. Bare `flywheel` prints the help;
`flywheel --version` the version and the code revision.
"""

from __future__ import annotations

import sys

from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from flywheel import __version__
from flywheel.errors import FlywheelError
from flywheel.flows.commands import (
    agent,
    annotate,
    annotators,
    batch,
    deployed,
    evaluate,
    judges,
    lake,
    leaderboard,
    prepare,
    resources,
    reward,
    runs,
)
from flywheel.revision import code_revision


def _version() -> str:
    return f"rlhf-flywheel {__version__} (code revision {code_revision()})"


app = App(
    name="flywheel",
    help="rlhf-flywheel: the iterative RLHF loop (sample, annotate, reward models, rejection "
    "sampling and PPO, evaluate, promote) as Prefect flows over a lake.\n\n"
    "Commands that read or write a lake take it from --lake, FLYWHEEL_LAKE, or the config "
    "(--config, FLYWHEEL_CONFIG, ./flywheel.yaml), and say which on stderr. "
    "Start with `flywheel init`, or `flywheel demo`.",
    version=_version,
    default_parameter=Parameter(negative=()),
)
# in the order a new user meets them
COMMANDS = [("init", prepare.init), ("bootstrap", prepare.bootstrap), ("check", prepare.check),
            ("plan-resources", resources.plan_resources),
            ("demo", runs.demo), ("run", runs.run), ("status", runs.status),
            ("ingest", lake.ingest), ("import", lake.import_), ("annotate", annotate.app),
            ("batch", batch.app), ("quarantine", batch.quarantine),
            ("annotators", annotators.annotators),
            ("lineage", lake.lineage), ("lake", lake.app), ("evaluate", evaluate.evaluate),
            ("evaluate-rm", reward.evaluate_rm),
            ("leaderboard", leaderboard.leaderboard),
            ("judge-agreement", judges.judge_agreement),
            ("serve", deployed.serve), ("deploy", deployed.deploy), ("trigger", deployed.trigger),
            ("rank-agent", agent.rank_agent)]
for order, (name, command) in enumerate(COMMANDS):
    if isinstance(command, App):  # a group of subcommands carries its own name
        command.sort_key = order
        app.command(command)
    else:
        app.command(command, name=name, sort_key=order)

def main(argv: list[str] | None = None) -> int:
    try:
        result = app(sys.argv[1:] if argv is None else argv, result_action="return_value",
                     print_error=False, exit_on_error=False)
    except CycloptsError as err:
        print(f"flywheel: error: {err}", file=sys.stderr)
        return 2
    except FlywheelError as err:
        print(f"flywheel: error: {err}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
