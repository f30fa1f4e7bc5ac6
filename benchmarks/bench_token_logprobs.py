"""Token log-probs from logits: the Triton op (kernels/token_logprobs.py: an online log-sum-exp
over the vocabulary, no [tokens, vocab] float32 log-softmax) against eager PyTorch, forward and
forward+backward, bf16 logits, with peak memory, bytes moved and the fraction of the measured
bandwidth.

    .venv/bin/python benchmarks/bench_token_logprobs.py [--reps 20]

Writes benchmarks/results/token_logprobs.md. Eager is the op's torch reference,
`logits.float().log_softmax(-1).gather(-1, t[:, None])`, which stores the [N, V] logits twice in
float32 (and its backward three times more). Without a GPU it says so in the results and only
checks the kernel under Triton's interpreter against the reference on a small shape.
"""

from pathlib import Path

import torch
from _gpu import (
    bandwidth_line,
    bw_frac,
    command_line,
    gpu_machine,
    measured_bandwidth,
    or_oom,
    peak_gib,
    run_and_write,
    skipped_row,
    time_ms,
)

OUT = Path(__file__).parent / "results" / "token_logprobs.md"
TITLE = "Token log-probs from logits: Triton op vs eager PyTorch"
GPU_TABLE = ("forward and forward+backward, bf16 logits, V = 32000 and 49152, N = 4096, 16384 "
             "and 65536 tokens: eager and fused time, speed-up, peak memory, bytes moved, "
             "fraction of the measured bandwidth")
# (N tokens, V): rows of real scoring runs (a batch of B responses x their tokens), two vocabularies
SHAPES = [(n, v) for v in (32000, 49152) for n in (4096, 16384, 65536)]
DIFF_ROWS = 1024  # rows compared between fused and eager: a full-size eager gradient is 12 GiB


def fwd_bytes(n, v):
    """The forward's unavoidable traffic: read the bf16 logits and the int64 targets, write the
    float32 log-probs."""
    return 2 * n * v + 8 * n + 4 * n


def bwd_bytes(n, v):
    """The backward's own: read the logits again and write their bf16 gradient, and read the
    targets, the saved float32 log-sum-exp and the incoming float32 gradient."""
    return 2 * 2 * n * v + (8 + 4 + 4) * n


def grad_bytes(n, v):
    """The [N, V] bf16 gradient the backward must return: peak memory it cannot avoid."""
    return 2 * n * v


def make_inputs(n, v, device="cuda"):
    """bf16 logits [n, v] at the spread of a language model's (std 3), targets [n], the incoming
    float32 gradient [n]."""
    logits = torch.randn(n, v, device=device, dtype=torch.bfloat16) * 3
    targets = torch.randint(0, v, (n,), device=device)
    return logits, targets, torch.randn(n, device=device)


def _max_diff(ops, logits, targets, g, backward):
    """Largest |fused - eager| over the first DIFF_ROWS rows: log-probs, or the logits' gradient."""
    x, t, g = logits[:DIFF_ROWS].detach(), targets[:DIFF_ROWS], g[:DIFF_ROWS]
    outs = []
    for op in ops:
        xi = x.clone().requires_grad_(backward)
        out = op(xi, t)
        outs.append(torch.autograd.grad(out, xi, g)[0].float() if backward else out)
    return (outs[0] - outs[1]).abs().max().item()


def _case(op, logits, targets, g, reps, backward):
    """(ms, peak GiB above the inputs) of op on these inputs, forward or forward+backward."""
    logits.requires_grad_(backward)

    def run():
        logits.grad = None  # the previous call's gradient goes before this call allocates
        out = op(logits, targets)
        if backward:
            out.backward(g)

    ms = time_ms(run, reps)
    logits.grad = None  # the peak counts the gradient this call returns
    peak = peak_gib(run)
    logits.grad = None
    return ms, peak


def _measure(ops, n, v, reps):
    """{backward: None if the fused op ran out of memory, else (eager (ms, peak) or None if it
    ran out of memory, fused (ms, peak), max diff)}."""
    inputs = make_inputs(n, v)
    result = {}
    for backward in (False, True):
        fused = or_oom(lambda: _case(ops[0], *inputs, reps, backward))
        eager = or_oom(lambda: _case(ops[1], *inputs, reps, backward))
        inputs[0].grad = None
        result[backward] = fused and (eager, fused, _max_diff(ops, *inputs, backward))
    return result


def _row(backward, n, v, result, bw):
    keys = ("fwd+bwd" if backward else "fwd", n, v)
    if result is None or result[backward] is None:
        return skipped_row(keys, 12)
    eager, (f_ms, f_peak), diff = result[backward]
    nbytes = fwd_bytes(n, v) + (bwd_bytes(n, v) if backward else 0)
    extra = f_peak * 2**30 - (grad_bytes(n, v) if backward else 0)
    if eager is None:
        e_cells = f"out of memory | {f_ms:.3f} | n/a | out of memory"
    else:
        e_cells = f"{eager[0]:.3f} | {f_ms:.3f} | {eager[0] / f_ms:.2f}x | {eager[1]:.2f}"
    return ("| " + " | ".join(str(k) for k in keys) + f" | {e_cells} | {f_peak:.2f} | "
            f"{extra / 2**20:.1f} | {diff:.1e} | {nbytes / 1e9:.3f} | "
            f"{bw_frac(nbytes, f_ms, bw):.2f} |")


def gpu_report(reps):
    from flywheel.kernels.token_logprobs import token_logprobs, token_logprobs_reference

    bw = measured_bandwidth()
    lines = [
        f"{gpu_machine()} bf16 logits (std 3), int64 targets; median of {reps} runs after "
        "one warm-up, CUDA events. Peak = torch.cuda.max_memory_allocated above the inputs, the "
        "returned [N, V] gradient included; fused extra = the fused peak minus that gradient "
        "(N x V x 2 B, forward+backward only), the memory the op needs beyond its inputs and "
        "outputs, which should not grow with V.",
        bandwidth_line(bw),
        "GB moved = the unavoidable traffic: forward, the bf16 logits once (N x V x 2 B), the "
        "targets and the float32 log-probs; forward+backward, also the logits read again and "
        "their bf16 gradient written (2 x N x V x 2 B more) and the per-row targets, "
        "log-sum-exp and incoming gradient. Fused BW frac = GB moved / fused time / measured "
        "bandwidth. Max abs diff: fused against eager over the first "
        f"{DIFF_ROWS} rows, the log-probs (fwd) or the logits' gradient (fwd+bwd). Aims: 2x "
        "eager or more, 70 % of the measured bandwidth or more, fused extra independent of V.",
        command_line(Path(__file__).name),
        "",
        "| pass | N | V | eager ms | fused ms | speed-up | eager peak GiB | fused peak GiB |"
        " fused extra MiB | max abs diff | GB moved | fused BW frac |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = {}
    for n, v in SHAPES:
        results[n, v] = or_oom(
            lambda: _measure((token_logprobs, token_logprobs_reference), n, v, reps))
    for backward in (False, True):
        lines += [_row(backward, n, v, results[n, v], bw) for n, v in SHAPES]
    return lines


def cpu_check():
    """The kernel under Triton's interpreter against the torch reference over two vocabulary
    blocks, float32 and bf16, log-probs and gradient: the sentence that reports it."""
    from flywheel.kernels.token_logprobs import token_logprobs_reference, token_logprobs_triton

    torch.manual_seed(0)
    n, v = 37, 5003  # the default vocabulary block is 4096: two blocks, the second ragged
    logits, targets, g = make_inputs(n, v, device="cpu")
    errs = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        errs[dtype] = [_max_diff((token_logprobs_triton, token_logprobs_reference), x, targets,
                                 g, backward) for backward in (False, True)]
    (f32_fwd, f32_bwd), (bf_fwd, bf_bwd) = errs[torch.float32], errs[torch.bfloat16]
    return (
        f"Check only, at N={n}, V={v} (logits of std 3): the kernel under the interpreter "
        f"against the torch reference, max abs difference in float32 {f32_fwd:.2e} (log-probs) "
        f"and {f32_bwd:.2e} (logits' gradient); in bf16 {bf_fwd:.2e} and {bf_bwd:.2e} (the "
        "gradient is stored in bf16, whose spacing is 1.56e-02 between 2 and 4).")


def main():
    run_and_write(Path(__file__).name, OUT, TITLE, gpu_report, cpu_check, GPU_TABLE,
                  default_reps=20)


if __name__ == "__main__":
    main()
