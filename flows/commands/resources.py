"""`flywheel plan-resources`: each training stage's GPU memory per rank, before a run (the
arithmetic is flywheel/distributed/memory.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from cyclopts import Parameter, validators

from flywheel.flows.commands.common import ConfigOpt, JsonOpt, load, print_json

GRID_ZERO = (0, 2, 3)
GRID_RANKS = (1, 8, 16, 64)
TITLES = {"reward_model": "reward model (helpfulness and safety: each trained in its own job)",
          "rejection_sampling": "rejection sampling: fine-tuning the policy",
          "rrhf": "RRHF: the policy on a prompt's K responses in one forward",
          "ppo": "PPO: actor and critic trained; reference and both reward models frozen"}
COLUMNS = ("ZeRO", "ranks", "params", "grads", "optim", "activ", "vLLM", "total", "offload")


def plan_resources(*, config: ConfigOpt = None,
                   gpu_memory: Annotated[float, Parameter(
                       help="GB (10^9 bytes) of memory per GPU",
                       validator=validators.Number(gt=0))] = 80.0,
                   ranks: Annotated[list[int] | None, Parameter(
                       help="plan at these numbers of ranks instead of each stage's "
                       "resources (e.g. --ranks 8 16)", consume_multiple=True)] = None,
                   zero: Annotated[Literal[0, 1, 2, 3] | None, Parameter(
                       help="plan at this ZeRO stage instead of each stage's deepspeed "
                       "config's")] = None,
                   json: JsonOpt = False) -> int:
    """Each training stage's GPU memory per rank, and whether it fits the card.

    Per rank, in GB: parameters, gradients, AdamW state and one micro-batch's activations,
    under the stage's ZeRO stage and ranks (its `deepspeed` and `resources`, or --zero and
    --ranks: the rows marked *), then at ZeRO 0, 2 and 3 on 1, 8, 16 and 64 ranks; from the
    models' configs alone, no weights read. A row fits when rank 0's total, with the vLLM
    engine the stage keeps open on its card, leaves 10 % of the card free.

    Example: flywheel plan-resources --config flywheel.yaml --gpu-memory 80
    """
    from flywheel.distributed.memory import GB, HEADROOM, STAGES, plan_stage

    cfg = load(config, None, need_lake=False)
    card = gpu_memory * GB
    stages = []
    for stage in STAGES:
        chosen = [plan_stage(cfg, stage, n, zero) for n in ranks or [None]]
        own = {(p.training.zero, p.ranks) for p in chosen}
        grid = [plan_stage(cfg, stage, n, z) for z in GRID_ZERO for n in GRID_RANKS
                if (z, n) not in own]
        stages.append((stage, chosen, grid))
    if json:
        print_json({"gpu_memory_gb": gpu_memory, "headroom": HEADROOM,
                    "stages": [{"stage": s, "configured": [p.to_dict(card) for p in chosen],
                                "grid": [p.to_dict(card) for p in grid]}
                               for s, chosen, grid in stages]})
        return 0
    print(f"GPU memory per rank in GB (10^9 bytes); a row fits a card of {gpu_memory:g} GB when "
          f"rank 0 leaves {HEADROOM:.0%} of it free (vLLM: the engine the stage keeps open on "
          "rank 0's card). * the stage's own settings"
          + (" (with --ranks/--zero)" if ranks or zero is not None else "") + ".")
    for stage, chosen, grid in stages:
        print()
        print("\n".join(_table(TITLES[stage], chosen, grid, card, gpu_memory,
                                zero is not None)))
    return 0


def _table(title: str, chosen: list, grid: list, card: float, gpu_memory: float,
           zero_given: bool) -> list[str]:
    from flywheel.distributed.memory import GB

    first = chosen[0]
    t = first.training
    lines = [title]
    for m in first.models:
        lines.append(f"  {m.role}: {m.model} ({m.params / 1e9:.3g}e9 params, "
                     + ("trained)" if m.trained else "frozen, fp32 on every rank)"))
    how = "--zero" if zero_given else t.deepspeed or "plain PyTorch"
    lines.append(f"  {how}: ZeRO-{t.zero}, {t.precision}"
                 + (", optimizer offloaded to CPU" if t.offload_optimizer else "")
                 + (", parameters offloaded to CPU" if t.offload_params else "")
                 + f"; micro-batch per rank {first.sequences} x {first.tokens} tokens")
    refused = next((p.refused for p in chosen + grid if p.refused), None)
    if refused:
        lines.append(f"  ZeRO-3 refused: {refused}; use stage 2 or lower")
    widths = (5, 6, 7, 7, 7, 7, 6, 7, 8)
    lines.append("  " + " ".join(c.rjust(w) for c, w in zip(COLUMNS, widths))
                 + f"  on {gpu_memory:g} GB")
    for mark, plans in (("*", chosen), (" ", grid)):
        for p in plans:
            cells = [f"{p.training.zero}{mark}", str(p.ranks)] + [
                f"{v / GB:.1f}" for v in (p.weights, p.gradients, p.optimizer, p.activations,
                                          p.sampling_share * card, p.needed(card), p.offloaded)]
            verdict = ("refused" if p.refused
                       else "fits" if p.fits(card) else "does not fit")
            lines.append("  " + " ".join(c.rjust(w) for c, w in zip(cells, widths))
                         + f"  {verdict}")
    return lines
