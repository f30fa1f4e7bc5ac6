"""Last-token read-out of a reward model: the Triton op (kernels/last_token.py: gather each
sequence's last real hidden state, then RMSNorm and the scalar head on those B rows) against the
eager path of a sequence-classification head (RMSNorm and the [d] -> 1 head at every position,
then the last real token's score), forward, bf16 hidden states, right padding with random
lengths, with bytes moved and the fraction of the measured bandwidth.

    .venv/bin/python benchmarks/bench_last_token.py [--reps 100]

Writes benchmarks/results/last_token.md. Without a GPU it says so in the results and only checks
the kernel under Triton's interpreter, and this benchmark's eager path, against the torch
reference on a small shape.
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
    run_and_write,
    skipped_row,
    time_ms,
)

OUT = Path(__file__).parent / "results" / "last_token.md"
TITLE = "Last-token read-out: Triton op vs the eager sequence-classification head"
GPU_TABLE = ("forward, bf16, B = 64 and 256 sequences x S = 512 and 1024 tokens x d = 576, 2048 "
             "and 4096, plus a bandwidth probe at B = 16384, S = 32, d = 4096: eager and fused "
             "time, speed-up, bytes moved, fraction of the measured bandwidth")
EPS = 1e-6
# (B sequences, S tokens, d): batches of real scoring runs, then one bandwidth probe with enough
# rows (16384 x 4096 x 2 B = 128 MiB) for the kernel's time to exceed its launch
SHAPES = [(b, s, d) for d in (576, 2048, 4096) for b in (64, 256) for s in (512, 1024)]
PROBE = (16384, 32, 4096)


def fused_bytes(b, d, elt=2):
    """The read-out's unavoidable traffic: the B last rows of hidden, the norm weight, the head
    weight and bias (all `elt` bytes an element), and B float32 rewards."""
    return (b * d + 2 * d + 1) * elt + 4 * b


def eager_bytes(b, s, d, elt=2):
    """What the eager path reads at the least: the whole hidden tensor, every position (its
    float32 intermediates, read and written several times over, not counted)."""
    return b * s * d * elt


def eager(hidden, mask, weight, bias, norm_weight, eps=EPS):
    """A sequence-classification head: RMSNorm at every position (in float32, back to the hidden
    dtype, times its weight), the head at every position, then the last real token's score."""
    from flywheel.kernels.last_token import last_token_index

    x = hidden.float()
    x = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(hidden.dtype) * norm_weight
    scores = (x @ weight.t() + bias).squeeze(-1)  # [B, S]: one score per position
    idx = last_token_index(mask)
    return scores[torch.arange(len(idx), device=idx.device), idx].float()


def make_inputs(b, s, d, dtype=torch.bfloat16, device="cuda"):
    """hidden [b, s, d], right-padded int64 mask with lengths drawn in [1, s], head weight
    [1, d], bias [1], RMSNorm weight [d]."""
    hidden = torch.randn(b, s, d, device=device, dtype=dtype)
    lengths = torch.randint(1, s + 1, (b,), device=device)
    mask = (torch.arange(s, device=device)[None, :] < lengths[:, None]).long()
    weight = (torch.randn(1, d, device=device) * d**-0.5).to(dtype)
    bias = torch.randn(1, device=device).to(dtype)
    norm_weight = (1 + 0.1 * torch.randn(d, device=device)).to(dtype)
    return hidden, mask, weight, bias, norm_weight


def _measure(op, b, s, d, reps):
    """(eager ms, or None when it ran out of memory; fused ms; max |fused - eager|)."""
    args = make_inputs(b, s, d)
    f_ms = time_ms(lambda: op(*args, EPS), reps)
    e_ms = or_oom(lambda: time_ms(lambda: eager(*args), reps))
    diff = or_oom(lambda: (op(*args, EPS) - eager(*args)).abs().max().item())
    return e_ms, f_ms, diff


def _row(b, s, d, result, bw):
    if result is None:
        return skipped_row((b, s, d), 11)
    e_ms, f_ms, diff = result
    fb, eb = fused_bytes(b, d), eager_bytes(b, s, d)
    e_cells = (f"{e_ms:.3f} | {f_ms:.3f} | {e_ms / f_ms:.1f}x" if e_ms is not None
               else f"out of memory | {f_ms:.3f} | n/a")
    e_frac = f"{bw_frac(eb, e_ms, bw):.2f}" if e_ms is not None else "n/a"
    d_cell = f"{diff:.1e}" if diff is not None else "n/a"
    return (f"| {b} | {s} | {d} | {e_cells} | {d_cell} | {fb / 1e6:.3f} | {eb / 1e6:.1f} | "
            f"{bw_frac(fb, f_ms, bw):.3f} | {e_frac} |")


def gpu_report(reps):
    from flywheel.kernels.last_token import last_token_readout

    bw = measured_bandwidth()
    lines = [
        f"{gpu_machine()} Forward, bf16 hidden states and weights, right padding with "
        f"lengths drawn in [1, S], RMSNorm then the [d] -> 1 head; median of {reps} runs after "
        "one warm-up, each timed alone with CUDA events (so the time of a call as the scoring "
        "engine sees it, launches included).",
        bandwidth_line(bw),
        "Fused MB = the unavoidable traffic: the B last rows (B x d x 2 B), the norm and head "
        "weights and the bias, B float32 rewards; fused BW frac = fused MB / fused time / "
        "measured bandwidth. Eager MB = the whole hidden tensor (B x S x d x 2 B), which the "
        "eager head must read at the least (it also writes and reads float32 copies of it); "
        "eager BW frac = eager MB / eager time / measured bandwidth. Not counted on either side: "
        "the int64 mask (B x S x 8 B), read to find each last index, and, in the op, the "
        "second gather of the B rows that its forward keeps for the backward.",
        "The aim is a read-out at 80 % of the measured bandwidth. At the scoring shapes the rows "
        "are at most 256 x 4096 x 2 B = 2 MiB, under a microsecond at full bandwidth, so the "
        "time is that of launching the op's few small kernels and the fraction there is small by "
        "construction; the probe row (B x d = 128 MiB of rows, not a scoring shape) is where the "
        "kernel's own bandwidth shows. Max abs diff: fused against eager (bf16 norm output).",
        command_line(Path(__file__).name),
        "",
        "| B | S | d | eager ms | fused ms | speed-up | max abs diff | fused MB | eager MB |"
        " fused BW frac | eager BW frac |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, s, d in SHAPES + [PROBE]:
        result = or_oom(lambda: _measure(last_token_readout, b, s, d, reps))
        lines.append(_row(b, s, d, result, bw))
    return lines


def cpu_check():
    """The kernel under Triton's interpreter against the torch reference, and this benchmark's
    eager path against it, on a small odd shape: the sentence that reports both."""
    from flywheel.kernels.last_token import last_token_reference, last_token_triton

    torch.manual_seed(0)
    b, s, d = 5, 13, 37
    hidden, mask, weight, bias, norm_weight = make_inputs(b, s, d, torch.float32, "cpu")
    grads, outs = [], []
    for fn in (last_token_triton, last_token_reference):
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias, norm_weight)]
        out = fn(leaves[0], mask, leaves[1], leaves[2], leaves[3], EPS)
        outs.append(out)
        grads.append(torch.autograd.grad(out.sum(), leaves))
    err = max([(outs[0] - outs[1]).abs().max().item()]
              + [(x - y).abs().max().item() for x, y in zip(*grads)])
    eager_err = (eager(hidden, mask, weight, bias, norm_weight) - outs[1]).abs().max().item()
    return (
        f"Check only, at B={b}, S={s}, d={d} (float32, right padding, with the RMSNorm weight): "
        f"the kernel under the interpreter against the torch reference, forward and gradients "
        f"(hidden, head weight, bias, norm weight): max abs difference {err:.2e}; this "
        f"benchmark's eager full-sequence head against the reference: {eager_err:.2e}.")


def main():
    run_and_write(Path(__file__).name, OUT, TITLE, gpu_report, cpu_check, GPU_TABLE,
                  default_reps=100)


if __name__ == "__main__":
    main()
