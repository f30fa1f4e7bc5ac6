"""The `flywheel` commands, one module per group (flows/cli.py gathers them): prepare (init,
bootstrap, check), runs (demo, run, status), lake (ingest, import, lineage), annotate, evaluate
(evaluate-rm), deployed (serve, deploy, trigger); where says which config and lake a command
uses, common what they share."""
