"""Comparisons from people or the simulated annotator: prompts, the week's pairs, the exchange
formats (Label Studio, Argilla), the built-in review page, and ingest of delivered batches."""
