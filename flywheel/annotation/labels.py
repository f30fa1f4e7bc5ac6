"""A delivery's label columns read the same way whatever their spelling: 'Significantly better',
'chosen-safe other-unsafe' and 'significantly_better' are one label (docs/delivery-format.md lists
the spellings). A column holds a few distinct values, so each is normalised once."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# other spellings of a label, after `label_key` (docs/delivery-format.md lists them)
LABEL_ALIASES = {"unsure": "negligibly_better", "negligibly_better_or_unsure": "negligibly_better",
                 "negligibly_better_unsure": "negligibly_better"}


def label_key(value: str) -> str:
    """A label folded: lower case, spaces, '-' and '/' alike, runs of them one '_', trimmed."""
    return "_".join(value.strip().lower().replace("-", " ").replace("/", " ").split())


def read_label(value: str | None) -> str | None:
    """'Significantly better', 'chosen-safe other-unsafe' -> snake_case (`label_key`, then
    LABEL_ALIASES); blank -> None."""
    if value is None or not value.strip():
        return None
    key = label_key(value)
    return LABEL_ALIASES.get(key, key)


def _stripped(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _map_distinct(col: pa.Array, fn) -> pa.Array:
    """fn applied to each distinct value of a (low-cardinality) text column."""
    encoded = pa.chunked_array(col).combine_chunks().dictionary_encode()
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], pa.string())
    out = pc.take(mapped, encoded.indices)
    missing = fn(None)  # nulls are not in the dictionary
    return out if missing is None else pc.fill_null(out, missing)


def normalised_labels(t: pa.Table) -> pa.Table:
    """Adds `<column>_n` for the label columns: snake_case labels, lower-case choice and split,
    trimmed annotator and source (in-house when blank)."""
    labels = {"chosen": read_label, "strength": read_label, "criterion": read_label,
              "safety_label": read_label, "split": read_label, "annotator": _stripped,
              "source": lambda v: _stripped(v) or "in-house"}
    for name, fn in labels.items():
        t = t.append_column(f"{name}_n", _map_distinct(t.column(name), fn))
    return t
