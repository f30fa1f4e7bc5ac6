"""One typed configuration for the whole loop, loaded from YAML and validated once.

Every problem in a file is reported together, each naming the field and the fix. The same models
are the parameters of the Prefect flows, where the UI renders them as a form.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from flywheel.config.evaluation import EvaluationConfig, LLMJudgeConfig
from flywheel.config.policy_update import (
    METHOD_SEQUENCES,
    Method,
    PolicyUpdateConfig,
    PPOConfig,
    RejectionSamplingConfig,
    RRHFConfig,
)
from flywheel.config.sections import (
    DEFAULT_EMBEDDER,
    DEFAULT_MODEL,
    DEFAULT_SEED,
    AnnotationConfig,
    MixConfig,
    ModelsConfig,
    PromptsConfig,
    RewardModelConfig,
    SamplingConfig,
    ScoringConfig,
    _Section,
)
from flywheel.errors import ConfigError

__all__ = [
    "AnnotationConfig", "DEFAULT_EMBEDDER", "DEFAULT_MODEL", "EvaluationConfig", "FlywheelConfig",
    "LLMJudgeConfig",
    "METHOD_SEQUENCES", "Method", "MixConfig", "ModelsConfig", "PPOConfig", "PolicyUpdateConfig",
    "PromptsConfig", "RRHFConfig", "RejectionSamplingConfig", "RewardModelConfig",
    "SamplingConfig", "ScoringConfig", "format_validation_error", "load_config", "validate_config",
]


class FlywheelConfig(_Section):
    """The whole loop. Relative paths are taken from the current directory."""

    name: str = "flywheel"
    lake: str = Field("./flywheel-demo/lake", description="Local folder or s3://bucket/prefix.")
    seed: int = Field(
        DEFAULT_SEED,
        description="The run's seed. Each stage's own `seed` (sampling, reward_model, "
        "reward_model.mix, rejection_sampling, policy_update.ppo, policy_update.rrhf) left "
        "empty takes this value (`stage_seeds`): every stage seeds its own generators, so one "
        "number serves them all, and the seeds stay those every config used before there was "
        "a top-level one (0). A stage given its own keeps it.",
    )
    models: ModelsConfig = ModelsConfig()
    prompts: PromptsConfig = PromptsConfig()
    sampling: SamplingConfig = SamplingConfig()
    annotation: AnnotationConfig = AnnotationConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    rejection_sampling: RejectionSamplingConfig = RejectionSamplingConfig()
    policy_update: PolicyUpdateConfig = PolicyUpdateConfig()
    scoring: ScoringConfig = ScoringConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    def stage_seeds(self) -> dict[str, int]:
        """Each stage's seed by the path of its section, e.g. {"sampling": 0, ...}."""
        return {path: section.seed for path, section in self._seeded().items()}

    def _seeded(self) -> dict:
        return {"sampling": self.sampling, "reward_model": self.reward_model,
                "reward_model.mix": self.reward_model.mix,
                "rejection_sampling": self.rejection_sampling,
                "policy_update.ppo": self.policy_update.ppo,
                "policy_update.rrhf": self.policy_update.rrhf}

    @model_validator(mode="after")
    def _derive_seeds(self):
        for section in self._seeded().values():
            section.derive_seed(self.seed)
        return self


_FIXES = {
    "extra_forbidden": "remove it or fix its spelling",
    "missing": "add it",
    "literal_error": "use one of the values listed",
    "int_parsing": "give a whole number",
    "float_parsing": "give a number",
    "bool_parsing": "give true or false",
    "string_type": "give a string",
    "list_type": "give a list, e.g. [0.7, 1.0]",
    "model_type": "give a mapping of keys under it",
}


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the configuration:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        fix = _FIXES.get(e["type"])
        if fix is None and e["type"].startswith(("greater_than", "less_than", "too_")):
            fix = "change the value to fit the bound"
        line = f"  - {field}: {msg}"
        if e["type"] != "missing" and not isinstance(got, dict):
            line += f" (got {got!r})"
        if fix:
            line += f"; fix: {fix}"
        lines.append(line)
    return "\n".join(lines)


def validate_config(data: dict, source: str = "config") -> FlywheelConfig:
    try:
        return FlywheelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> FlywheelConfig:
    """Read a YAML file, apply dotted overrides (`{"lake": "s3://b/p"}`), validate once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; pass --config with an existing YAML file "
            "(deployments/demo.yaml is the embedded default)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validate_config(data, str(path))
