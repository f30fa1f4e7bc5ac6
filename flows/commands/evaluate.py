"""`flywheel evaluate-rm`: a trained reward model's accuracy on any comparison file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from flywheel.flows.commands.common import ConfigOpt, LakeOpt, existing_lake, load, print_json


def evaluate_rm(model: Annotated[str, Parameter(
                    help="a reward-model checkpoint folder, or a reward model id in the lake "
                    "(a unique prefix is enough)")],
                file: Annotated[str, Parameter(
                    help="comparisons: a delivery in the Llama 2 protocol with inline prompts "
                    "and responses (.jsonl[.gz], .csv, .parquet) or Anthropic HH-RLHF")], /, *,
                config: ConfigOpt = None, lake: LakeOpt = None,
                format: Annotated[Literal["llama2", "hh-rlhf"] | None, Parameter(
                    help="default: guessed from the first record")] = None,
                max_length: Annotated[int | None, Parameter(
                    help="tokens per pair (default: as trained)")] = None) -> int:
    """A reward model's accuracy on a comparison file, as JSON.

    Overall, per preference strength and per safety label.

    Example: flywheel evaluate-rm 7c1e0a hh_rlhf_helpful_base_test.jsonl.gz
    """
    from flywheel.reward.evaluation import evaluate_file, resolve_model

    target = None if Path(model).is_dir() else existing_lake(load(config, lake).lake,
                                                              read_only=True)
    folder, row = resolve_model(model, target)
    result = evaluate_file(folder, file, format, max_length)
    if row:
        result.update(model=row["id"], kind=row["criterion"])
    print_json(result)
    return 0
