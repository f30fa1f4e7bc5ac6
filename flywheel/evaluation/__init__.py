"""Evaluation: the proxy judge and the head-to-head win rates with their intervals and the
promotion gate."""
