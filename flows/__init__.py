"""Prefect flows (the weekly iteration, the demo) and the `flywheel` command line."""
