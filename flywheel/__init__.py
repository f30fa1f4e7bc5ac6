"""rlhf-flywheel core library: config, lake, models, sampling, annotation, reward models,
rejection sampling, PPO and evaluation. Plain Python: nothing here imports Prefect."""

__version__ = "0.1.0"
