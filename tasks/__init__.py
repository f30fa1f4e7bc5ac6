"""Prefect tasks, one module per stage: small values (config, ids) in, ids out; the rows and
checkpoints themselves live in the lake."""
