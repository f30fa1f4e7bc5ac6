"""Deterministic synthetic ids and texts for the lake benchmarks: millions of rows in seconds
(numpy and Arrow, no Python loop per row)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_CHUNK = 100_000


def ids(tag: str, n: int) -> pa.Array:
    """n distinct 16-hex ids, like the lake's content hashes: md5("<tag><i>")[:16]."""
    return duckdb.sql(f"SELECT substr(md5('{tag}' || i), 1, 16) AS id FROM range({n}) t(i) "
                      "ORDER BY i").to_arrow_table().column("id").combine_chunks()


def corpus(rng: np.random.Generator, size: int = 1 << 24) -> np.ndarray:
    """About `size` bytes of lower-case pseudo-words separated by spaces."""
    letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkqjxz", np.uint8)
    weights = np.linspace(2.0, 0.2, len(letters))
    vocab = ["".join(chr(c) for c in rng.choice(letters, rng.integers(1, 10), p=weights /
                                                weights.sum())) for _ in range(5000)]
    words = rng.choice(np.array(vocab, dtype=object), size // 5)
    return np.frombuffer(" ".join(words).encode()[:size], np.uint8)


def texts(rng: np.random.Generator, text_corpus: np.ndarray, n: int, mean_chars: int,
          prefix: pa.Array | None = None) -> pa.ChunkedArray:
    """n texts of uniform length in [mean/2, 3*mean/2]: consecutive stretches of the corpus
    from a random start per chunk of rows; `prefix` (e.g. an id per row) is put in front, which
    makes them distinct."""
    lo, hi = max(1, mean_chars // 2), max(2, mean_chars * 3 // 2 + 1)
    per_chunk = max(1, min(_CHUNK, len(text_corpus) // hi))
    chunks = []
    for start in range(0, n, per_chunk):
        m = min(per_chunk, n - start)
        ends = np.cumsum(rng.integers(lo, hi, m))
        off = int(rng.integers(0, len(text_corpus) - ends[-1] + 1))
        offsets = np.concatenate([[0], ends]).astype(np.int32)
        data = pa.py_buffer(text_corpus[off:off + ends[-1]])
        arr = pa.StringArray.from_buffers(m, pa.py_buffer(offsets), data)
        if prefix is not None:
            arr = pc.binary_join_element_wise(prefix.slice(start, m), arr, " ")
        chunks.append(arr)
    return pa.chunked_array(chunks, pa.string())


def joined_lines(lines: pa.ChunkedArray) -> bytes:
    """The strings one after another, each followed by a newline, as one bytes object."""
    out = []
    for chunk in lines.cast(pa.large_string()).chunks:
        empty = pa.scalar("", pa.large_string())
        chunk = pc.binary_join_element_wise(chunk, empty, pa.scalar("\n", pa.large_string()))
        offsets = np.frombuffer(chunk.buffers()[1], np.int64)[chunk.offset:
                                                             chunk.offset + len(chunk) + 1]
        out.append(memoryview(chunk.buffers()[2])[offsets[0]:offsets[-1]])
    return b"".join(out)
