"""Reward combination (Llama 2's PPO reward: safety gate, logit, whitening over the batch, KL
penalty): the Triton op (kernels/reward_combine.py, one pass) against its torch reference run on
the GPU (eager: many small kernels), float32 rewards and KL, int32 tags and mask as
flywheel/reward/scoring.py passes them, right padding with random response lengths, with bytes moved
and the fraction of the measured bandwidth.

    .venv/bin/python benchmarks/bench_reward_combine.py [--reps 100]

Writes benchmarks/results/reward_combine.md. Without a GPU it says so in the results and only
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
    run_and_write,
    skipped_row,
    time_ms,
)

OUT = Path(__file__).parent / "results" / "reward_combine.md"
TITLE = "Reward combination: Triton op vs the torch reference, on the GPU"
GPU_TABLE = ("B = 256, 1024 and 4096 responses x T = 256 and 1024 tokens: reference and fused "
             "time, speed-up, bytes moved, fraction of the measured bandwidth")
# (B responses, T response tokens): PPO batches of real runs
SHAPES = [(b, t) for t in (256, 1024) for b in (256, 1024, 4096)]
BETA = 0.05


def combine_bytes(b, t):
    """The unavoidable traffic: read two float32 reward-model outputs and an int32 safety tag per
    response, the float32 KL and the int32 mask per token; write the float32 score and sequence
    reward per response and the float32 token rewards."""
    return b * (4 + 4 + 4) + b * t * (4 + 4) + b * (4 + 4) + b * t * 4


def make_inputs(b, t, device="cuda"):
    """(helpfulness and safety outputs [b], safety tags [b], KL [b, t], mask [b, t]) with response
    lengths drawn in [1, t]; about one response in five tagged safety."""
    r_help, r_safe = torch.randn(b, device=device) * 2, torch.randn(b, device=device) * 2
    tags = (torch.rand(b, device=device) < 0.2).to(torch.int32)
    kl = torch.randn(b, t, device=device) * 0.1
    lengths = torch.randint(1, t + 1, (b,), device=device)
    mask = (torch.arange(t, device=device)[None, :] < lengths[:, None]).to(torch.int32)
    return r_help, r_safe, tags, kl, mask


def _threshold():
    # imported here, not at the top: the no-GPU run sets TRITON_INTERPRET before triton loads
    from flywheel.reward.combined import SAFETY_THRESHOLD

    return SAFETY_THRESHOLD


def _max_diff(ops, inputs):
    """Largest |fused - reference| over score, sequence reward, token rewards and R_c."""
    outs = [op(*inputs, BETA, _threshold()) for op in ops]
    return max((x - y).abs().max().item() for x, y in zip(*outs))


def _measure(ops, b, t, reps):
    """(reference ms, or None when it ran out of memory; fused ms; max diff)."""
    inputs = make_inputs(b, t)
    threshold = _threshold()
    f_ms = time_ms(lambda: ops[0](*inputs, BETA, threshold), reps)
    r_ms = or_oom(lambda: time_ms(lambda: ops[1](*inputs, BETA, threshold), reps))
    return r_ms, f_ms, _max_diff(ops, inputs)


def _row(b, t, result, bw):
    if result is None:
        return skipped_row((b, t), 9)
    r_ms, f_ms, diff = result
    nbytes = combine_bytes(b, t)
    r_cells = (f"{r_ms:.3f} | {f_ms:.3f} | {r_ms / f_ms:.2f}x" if r_ms is not None
               else f"out of memory | {f_ms:.3f} | n/a")
    r_frac = f"{bw_frac(nbytes, r_ms, bw):.3f}" if r_ms is not None else "n/a"
    return (f"| {b} | {t} | {r_cells} | {diff:.1e} | {nbytes / 1e6:.2f} | "
            f"{bw_frac(nbytes, f_ms, bw):.3f} | {r_frac} |")


def gpu_report(reps):
    from flywheel.kernels.reward_combine import combine_rewards, combine_rewards_reference

    bw = measured_bandwidth()
    lines = [
        f"{gpu_machine()} float32 rewards and KL, int32 tags and mask, beta {BETA}, "
        f"response lengths drawn in [1, T]; median of {reps} runs after one warm-up, each timed "
        "alone with CUDA events (launches included: at these sizes they are much of the time).",
        bandwidth_line(bw),
        "MB moved = the unavoidable traffic: per response two float32 reward-model outputs and "
        "an int32 tag read, a float32 score and sequence reward written; per token the float32 "
        "KL and the int32 mask read and the float32 token reward written (12 B a token). Not "
        "counted: the first launch (one program) reads the per-response inputs three times (mean, "
        "variance, scores; B floats); the second, a grid over row blocks, reads the KL and mask "
        "once, finds each last response token on the way and adds the score there; the "
        "reference's intermediates are not counted either. BW frac = MB moved / time / measured "
        "bandwidth, for each side. Max abs diff: fused "
        "against the reference over score, sequence and token rewards.",
        command_line(Path(__file__).name),
        "",
        "| B | T | reference ms | fused ms | speed-up | max abs diff | MB moved | fused BW frac |"
        " reference BW frac |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ops = (combine_rewards, combine_rewards_reference)
    for b, t in SHAPES:
        lines.append(_row(b, t, or_oom(lambda: _measure(ops, b, t, reps)), bw))
    return lines


def cpu_check():
    """The kernel under Triton's interpreter against the torch reference on a ragged shape: the
    sentence that reports it."""
    from flywheel.kernels.reward_combine import combine_rewards_reference, combine_rewards_triton

    torch.manual_seed(0)
    b, t = 131, 301  # default blocks are 64 responses x 128 tokens: 3 x 3 tiles, ragged
    err = _max_diff((combine_rewards_triton, combine_rewards_reference),
                    make_inputs(b, t, device="cpu"))
    return (
        f"Check only, at B={b}, T={t} (float32, int32 tags and mask, right padding, beta {BETA}; "
        "forward only, rewards are not differentiated): the kernel under the interpreter against "
        f"the torch reference, max abs difference over score, sequence and token rewards and R_c "
        f"{err:.2e}.")


def main():
    run_and_write(Path(__file__).name, OUT, TITLE, gpu_report, cpu_check, GPU_TABLE,
                  default_reps=100)


if __name__ == "__main__":
    main()
