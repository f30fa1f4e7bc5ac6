"""Training across ranks: which rank this process is and its share of each step (ranks.py),
starting a stage's ranks with torchrun and reporting a failed one (launch.py), and what each
rank runs (worker.py)."""
