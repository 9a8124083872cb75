"""Parquet parts, one file per step: how metrics and rollouts are written and read back.

Where it sits: `RunDir.log_metrics` / `log_rollouts` write one part per step
(`metrics/step_0000012.parquet`); readers concatenate the parts. One file per step makes every
write atomic and idempotent: a resumed run that redoes step 12 replaces `step_0000012.parquet`,
so no step is ever logged twice and nothing needs an append-in-place.

    write_part(path, columns_to_table({"step": [3], "loss": [0.5]}))
    table = read_parts(sorted(dir.glob("step_*.parquet")), sort_by="step")
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gapray.storage.atomic import atomic_path

PART_RE = re.compile(r"^step_(\d{7})\.parquet$")
"""A finished part; temp files (`step_0000012.parquet.tmp-...`) never match."""


def part_name(step: int) -> str:
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return f"step_{int(step):07d}.parquet"


def list_parts(directory: Path) -> list[Path]:
    """Finished parts in `directory`, in step order."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if PART_RE.match(p.name))


def to_arrow(name: str, values: Sequence[Any] | np.ndarray) -> pa.Array:
    """One column to Arrow. A 2-D array (N, T) becomes a list column of N rows of T items.

    The item type is kept (int32 tokens stay list<int32>), and the list is built from one flat
    buffer instead of N Python lists.
    """
    if isinstance(values, np.ndarray):
        if values.ndim == 1:
            return pa.array(values)
        if values.ndim == 2:
            n, t = values.shape
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            offsets = pa.array(np.arange(0, n * t + 1, t, dtype=np.int32) if n else [0], pa.int32())
            return pa.ListArray.from_arrays(offsets, flat)
        raise ValueError(f"column {name!r}: arrays must be 1-D or 2-D, got shape {values.shape}")
    # A list of 1-D numpy rows (ragged token lists): one flat buffer + offsets, keeping the dtype.
    if len(values) and all(isinstance(v, np.ndarray) and v.ndim == 1 for v in values):
        lengths = np.array([len(v) for v in values], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(values)))
    return pa.array(values)


def columns_to_table(columns: Mapping[str, Sequence[Any] | np.ndarray]) -> pa.Table:
    """Build a table from equal-length columns; names the offending column if lengths differ."""
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns have different lengths: {lengths}")
    return pa.table({name: to_arrow(name, v) for name, v in columns.items()})


def write_part(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _conflicting(tables: list[pa.Table]) -> set[str]:
    """Columns whose types cannot be merged (e.g. a float in one step, a string in another)."""
    seen: dict[str, pa.DataType] = {}
    bad: set[str] = set()
    for t in tables:
        for field in t.schema:
            if pa.types.is_null(field.type):
                continue
            prev = seen.setdefault(field.name, field.type)
            if prev == field.type:
                continue
            numeric = (pa.types.is_integer, pa.types.is_floating)
            if not (any(f(prev) for f in numeric) and any(f(field.type) for f in numeric)):
                bad.add(field.name)
    return bad


def concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables with different columns: missing columns become null, int + float ->
    float. Columns whose types still clash are cast to string, so a reader never fails on a
    logging slip (the values stay readable)."""
    if not tables:
        return pa.table({})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        bad = _conflicting(tables)
        fixed = []
        for t in tables:
            for name in bad & set(t.column_names):
                i = t.schema.get_field_index(name)
                t = t.set_column(i, name, t.column(name).cast(pa.string()))
            fixed.append(t)
        return pa.concat_tables(fixed, promote_options="permissive")


def read_parts(paths: Sequence[Path], sort_by: str | None = None) -> pa.Table:
    table = concat([pq.read_table(p) for p in paths])
    if sort_by is not None and sort_by in table.column_names and table.num_rows:
        table = table.sort_by(sort_by)
    return table
