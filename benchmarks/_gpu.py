"""What the per-op kernel benchmarks (benchmarks/bench_<op>.py) share: median CUDA-event time,
peak memory above what is already allocated, the measured memory bandwidth of this GPU and the
fraction of it an op reaches, the skip of a case that runs out of memory, and the command-line
tail (`--reps`, `--out`, the GPU table or, without a GPU, the check under Triton's interpreter,
written with its title, machine and command). Imports torch only (never triton), so a benchmark
can still switch Triton's interpreter on after importing this."""

import argparse
import os
import statistics
from pathlib import Path

import torch
from _machine import describe

COPY_BYTES = 2**30  # 1 GiB copied device to device: far above any cache, a few ms on an H100


def time_ms(fn, reps):
    """Median over `reps` calls of fn, each timed alone with CUDA events, after one warm-up call
    (Triton compiles there). For an op of a few small kernels the time is that of launching
    them: the GPU waits for the host between the two events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_gib(fn):
    """Peak memory during fn above what was allocated before the call (the inputs), GiB. What fn
    leaves allocated (a gradient it sets) counts."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def _copy_ms(nbytes, reps):
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return time_ms(lambda: dst.copy_(src), reps)


def measured_bandwidth(nbytes=COPY_BYTES, reps=20):
    """Bytes/s of a device-to-device copy of `nbytes`, counting the read and the write
    (2 * nbytes per copy): the bandwidth an op can reach on this GPU, as opposed to the data
    sheet's."""
    ms = _copy_ms(nbytes, reps)
    torch.cuda.empty_cache()  # the two buffers are gone with _copy_ms's frame
    return 2 * nbytes / (ms * 1e-3)


def bw_frac(nbytes, ms, bw):
    """The fraction of bandwidth `bw` (bytes/s) reached by moving `nbytes` in `ms` milliseconds."""
    return nbytes / (ms * 1e-3) / bw


def gpu_machine():
    """The results' machine line on a GPU: this machine with the GPU's name, torch's version."""
    return (f"Machine: {describe().replace('no GPU', torch.cuda.get_device_name())}; torch "
            f"{torch.__version__}.")


def use_interpreter():
    """Run Triton kernels through the interpreter on the CPU. Triton picks its interpreter at
    first import: call this before anything imports flywheel.kernels (which imports triton)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")


def command_line(script):
    """The results' line that says how to run `script` (a file name in benchmarks/)."""
    return f"Command: `.venv/bin/python benchmarks/{script}`"


def bandwidth_line(bw):
    return (f"Measured bandwidth: {bw / 1e9:.0f} GB/s (median device-to-device copy of "
            f"{COPY_BYTES / 2**30:.0f} GiB, read + write counted).")


def or_oom(fn):
    """fn(), or None when the GPU runs out of memory (the caller marks the case skipped in its
    table); the allocator's cache is emptied either way, for the next case."""
    try:
        result = fn()
    except torch.cuda.OutOfMemoryError:
        result = None
    torch.cuda.empty_cache()
    return result


def skipped_row(keys, columns):
    """A table row for a case that ran out of memory: its key cells, the note, empty cells."""
    cells = [str(k) for k in keys] + ["skipped: out of memory"]
    return "| " + " | ".join(cells + [""] * (columns - len(cells))) + " |"


def run_and_write(script, out, title, gpu_report, cpu_check, gpu_table, default_reps):
    """The command line every per-op benchmark shares: `--reps` and `--out` (default `out`).
    With a GPU, the title and `gpu_report(reps)`'s lines (the benchmark's own description,
    with `gpu_machine()` and `command_line(script)`, and its table); without one, the title,
    the machine, the command, why nothing was timed, the table a GPU would give (`gpu_table`, a
    phrase) and `cpu_check()`, the kernel checked under Triton's interpreter against its
    reference. Written to the results file and printed."""
    ap = argparse.ArgumentParser(description=title)
    ap.add_argument("--reps", type=int, default=default_reps,
                    help="timed runs per case, the median reported (GPU only)")
    ap.add_argument("--out", type=Path, default=out, help=f"the results file (default: {out})")
    args = ap.parse_args()
    if torch.cuda.is_available():
        body = gpu_report(args.reps)
    else:
        use_interpreter()
        body = [
            f"Machine: {describe()}.",
            command_line(script),
            "",
            "No GPU was available in this run, so nothing was timed: kernel timings on a CPU "
            "through Triton's interpreter mean nothing. Run this script on a CUDA machine for the "
            f"table ({gpu_table}).",
            "",
            cpu_check(),
        ]
    lines = [f"# {title}", "", *body]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
