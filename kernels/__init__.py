"""Ops for batched reward scoring. Each op lives in its own file with its torch reference; the
core library calls the dispatching function, never a kernel directly."""
