"""GPU measurement helpers shared by the per-op kernel benchmarks (benchmarks/bench_<op>.py):
median CUDA-event time, peak memory above what is already allocated, the measured memory
bandwidth of this GPU, and the skip of a case that runs out of memory. Imports torch only (never
triton), so a benchmark can still switch Triton's interpreter on after importing this."""

import statistics

import torch

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


def run_and_write(out, gpu_report, cpu_report, default_reps: int) -> None:
    """The command line every per-op benchmark shares: `--reps`, the GPU table when a GPU is
    there (else the interpreter check), written to `out` and printed."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=default_reps)
    args = ap.parse_args()
    lines = gpu_report(args.reps) if torch.cuda.is_available() else cpu_report()
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
