"""The weekly loop's stages as plain functions: config and lake in, lake ids out, one module each.

    sample_for_annotation.sample_for_annotation -> annotate.annotate
    -> reward_models.train_reward_models
    -> rejection_sampling.rejection_sample | rrhf.rrhf_update, then ppo.ppo_update where scheduled
    -> evaluate.evaluate -> promote.decide (promote or roll back, the iteration row and its report)

Each stage reads what it needs from the lake, writes its results there (rows, then checkpoints
with their completion markers), and returns ids, so an orchestrator can pass small values between
stages and any stage can run in its own process. `common` holds what they share (the lake, the
prompts, the policies, drawing samples); `scores` writes the reward models' scores of a stage's
samples; `plan` says what an iteration runs beyond the stages; `report` and `charts` write its
markdown report.
"""
