"""Token log-probs from hidden states and the output head: the fused Triton op
(kernels/head_logprobs.py) against eager PyTorch, forward and forward+backward, bf16, with peak
memory, bytes moved and the achieved fraction of the measured bandwidth, and of the data sheet's
bandwidth and bf16 tensor-core peak.

    .venv/bin/python benchmarks/bench_head_logprobs.py [--reps 20]

Writes benchmarks/results/head_logprobs.md. Eager is
`(h @ W.T).float().log_softmax(-1).gather(-1, t[:, None])`, which stores [N, V] logits in bf16 and
twice in float32. Without a GPU it says so in the results and only checks the torch reference
against the kernel under Triton's interpreter on a small shape.
"""

from pathlib import Path

import torch
from _gpu import (
    bandwidth_line,
    bw_frac,
    command_line,
    gpu_machine,
    measured_bandwidth,
    peak_gib,
    run_and_write,
    time_ms,
)

OUT = Path(__file__).parent / "results" / "head_logprobs.md"
TITLE = "Token log-probs from hidden states x output head: fused Triton vs eager PyTorch"
GPU_TABLE = "V = 32000 and 49152, D = 576 and 4096, N = 4096 and 16384, bf16"
SHAPES = [(n, v, d) for v in (32000, 49152) for d in (576, 4096) for n in (4096, 16384)]
# (HBM bytes/s, dense bf16 FLOP/s) from the vendor's data sheets, by device name
PEAKS = {"H200": (4.8e12, 989e12), "H100 PCIe": (2.0e12, 756e12), "H100": (3.35e12, 989e12),
         "A100": (2.0e12, 312e12)}


def eager(h, w, t):
    return (h @ w.t()).float().log_softmax(-1).gather(-1, t[:, None]).squeeze(-1)


def _case(op, n, v, d, reps, backward):
    h = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    w = (torch.randn(v, d, device="cuda") * d**-0.5).to(torch.bfloat16).requires_grad_(backward)
    t = torch.randint(0, v, (n,), device="cuda")
    g = torch.randn(n, device="cuda")

    def run():
        out = op(h, w, t)
        if backward:
            h.grad = w.grad = None
            out.backward(g)

    ms = time_ms(run, reps)
    h.grad = w.grad = None  # the peak counts the gradients this call returns
    peak = peak_gib(run)
    # unavoidable traffic: read h and W, write the log-probs; the backward reads them again
    # (plus the saved lse) and writes dh and dW
    nbytes = 2 * (n + v) * d + 4 * n
    flops = 2 * n * v * d
    if backward:
        nbytes += 2 * (2 * (n + v) * d) + 8 * n
        flops *= 3  # two more matmuls of the same size (the fused op also recomputes the logits)
    return ms, peak, nbytes, flops


def gpu_report(reps):
    from flywheel.kernels.head_logprobs import head_logprobs

    name = torch.cuda.get_device_name()
    bw, fl = next((p for k, p in PEAKS.items() if k in name), (None, None))
    measured = measured_bandwidth()
    lines = [
        f"{gpu_machine()} bf16 inputs, median of {reps} runs after one warm-up. "
        "Peak = torch.cuda.max_memory_allocated above the inputs, the returned gradients "
        "included. Bytes = the unavoidable traffic (h, W, log-probs; for the backward also dh, "
        "dW): the op is compute-bound, so the tensor-core fraction (2NVD FLOP forward, 6NVD "
        "forward+backward, the fused op's recomputed logits not counted) is the telling one. "
        "BW frac = bytes / fused time / measured bandwidth; sheet BW frac and TC frac against "
        "the data sheet's figures for this GPU.",
        bandwidth_line(measured),
        command_line(Path(__file__).name),
        "",
        "| pass | N | V | D | eager ms | fused ms | speed-up | eager peak GiB | fused peak GiB |"
        " GB moved | fused BW frac | fused sheet BW frac | fused TC frac |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backward in (False, True):
        for n, v, d in SHAPES:
            e_ms, e_peak, nbytes, flops = _case(eager, n, v, d, reps, backward)
            f_ms, f_peak, _, _ = _case(head_logprobs, n, v, d, reps, backward)
            sheet_frac = f"{bw_frac(nbytes, f_ms, bw):.2f}" if bw else "n/a"
            tc_frac = f"{flops / (f_ms * 1e-3) / fl:.2f}" if fl else "n/a"
            lines.append(
                f"| {'fwd+bwd' if backward else 'fwd'} | {n} | {v} | {d} | {e_ms:.2f} | "
                f"{f_ms:.2f} | {e_ms / f_ms:.2f}x | {e_peak:.2f} | {f_peak:.2f} | "
                f"{nbytes / 1e9:.3f} | {bw_frac(nbytes, f_ms, measured):.2f} | {sheet_frac} | "
                f"{tc_frac} |")
            torch.cuda.empty_cache()
    return lines


def cpu_check():
    """The kernel under Triton's interpreter against the float32 torch reference on a small odd
    shape, forward and gradients: the sentence that reports it."""
    from flywheel.kernels.head_logprobs import head_logprobs_reference, head_logprobs_triton

    torch.manual_seed(0)
    n, v, d = 37, 257, 40
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * 0.5).requires_grad_()
    t = torch.randint(0, v, (n,))
    out = head_logprobs_triton(h, w, t)
    dh, dw = torch.autograd.grad(out.sum(), (h, w))
    ref = head_logprobs_reference(h, w, t)
    rdh, rdw = torch.autograd.grad(ref.sum(), (h, w))
    err = max((out - ref).abs().max().item(), (dh - rdh).abs().max().item(),
              (dw - rdw).abs().max().item())
    return (
        f"Check only: the kernel under the interpreter against the float32 torch reference at "
        f"N={n}, V={v}, D={d} (float32), forward and gradients: max abs difference {err:.2e}.")


def main():
    run_and_write(Path(__file__).name, OUT, TITLE, gpu_report, cpu_check, GPU_TABLE,
                  default_reps=20)


if __name__ == "__main__":
    main()
