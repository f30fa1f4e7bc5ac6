"""The judges behind one interface: `make_judge(spec, cfg, lake)` gives an object with a `name`,
a `key` (what it is exactly: the model and prompt behind it, for records and the verdict cache)
and `compare(pairs) -> verdicts`.

- `proxy`: MiniLM relevance plus the refusal check (`proxy.py`), the embedded default;
- `reward-model[:ID-or-folder]`: the lake's promoted reward models, or the named one, pairwise
  by score;
- `llm`: any OpenAI-compatible chat endpoint, each pair judged in both orders.
"""

from __future__ import annotations

from flywheel import models
from flywheel.config import FlywheelConfig
from flywheel.errors import ConfigError
from flywheel.evaluation.llm_judge import LLMJudge
from flywheel.evaluation.proxy import ProxyJudge
from flywheel.evaluation.reward_judge import RewardModelJudge
from flywheel.evaluation.verdicts import Pair, Verdict

__all__ = ["JUDGES", "Pair", "Verdict", "make_judge"]

JUDGES = ("proxy", "reward-model", "llm")


def make_judge(spec: str, cfg: FlywheelConfig, lake=None):
    kind, _, arg = spec.partition(":")
    if kind == "proxy":
        return ProxyJudge(models.resolve(cfg.models.judge_embedder))
    if kind == "reward-model":
        return RewardModelJudge.from_spec(arg, cfg, lake)
    if kind == "llm":
        return LLMJudge.from_env(cfg, lake)
    raise ConfigError(f"unknown judge {spec!r}; choose one of {', '.join(JUDGES)} "
                     f"(reward-model takes an optional ':ID' or ':FOLDER')")
