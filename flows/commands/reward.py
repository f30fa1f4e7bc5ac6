"""`flywheel evaluate-rm`: a trained reward model's accuracy on any comparison file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from flywheel.errors import ConfigError
from flywheel.flows.commands.common import ConfigOpt, LakeOpt, existing_lake, load, print_json


def evaluate_rm(model: Annotated[str, Parameter(
                    help="a reward-model checkpoint folder, or a reward model id in the lake "
                    "(a unique prefix is enough)")],
                file: Annotated[str, Parameter(
                    help="comparisons: a delivery in the Llama 2 protocol with inline prompts "
                    "and responses (.jsonl[.gz], .csv, .parquet), Anthropic HH-RLHF or "
                    "UltraFeedback binarized (.jsonl[.gz], .json, .parquet)")], /, *,
                config: ConfigOpt = None, lake: LakeOpt = None,
                format: Annotated[Literal["llama2", "hh-rlhf", "ultrafeedback"] | None,
                                  Parameter(help="default: told from the first record")] = None,
                criterion: Annotated[Literal["helpfulness", "safety"] | None, Parameter(
                    help="what an HH-RLHF file's comparisons are about (default: from its "
                    "name, harmless -> safety, helpful -> helpfulness)")] = None,
                limit: Annotated[int | None, Parameter(
                    help="only the first N records of the file")] = None,
                token_budget: Annotated[int | None, Parameter(
                    name=["--token-budget", "--batch-size"],
                    help="padded tokens per forward pass of the scoring engine (its batch "
                    "size: pairs are sorted by length and packed up to it; default: the "
                    "config's scoring.token_budget, 4096); scores change only by float rounding")]
                = None,
                max_length: Annotated[int | None, Parameter(
                    help="tokens per pair (default: as trained)")] = None) -> int:
    """A reward model's accuracy on a comparison file, as JSON.

    Overall, per criterion, per strength and per safety label; every row is validated as
    ingest does and scored through the scoring engine, with a progress bar on stderr. Warns
    (stderr and "warnings") when the model's criterion is not the file's, and when some pairs
    are in the model's training mix (their accuracy is not held-out).

    Example: flywheel evaluate-rm 7c1e0a hh_rlhf_harmless_base_test_dev.jsonl.gz --limit 200
    """
    from flywheel.reward.evaluation import resolve_model
    from flywheel.reward.file_eval import evaluate_file

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 (got {limit})")
    if token_budget is not None and token_budget < 64:
        raise ConfigError(f"--token-budget counts padded tokens per forward pass, at least 64 "
                          f"(got {token_budget}); try 4096, or more on a GPU")
    folder = Path(model).is_dir()
    cfg = load(config, lake, need_lake=not folder)
    target = None if folder else existing_lake(cfg.lake, read_only=True)
    path, row = resolve_model(model, target)
    result = evaluate_file(path, file, format, max_length, limit=limit, criterion=criterion,
                           token_budget=token_budget or cfg.scoring.token_budget, row=row)
    for warning in result["warnings"]:
        print(f"flywheel: warning: {warning}", file=sys.stderr)
    print_json(result)
    return 0
