"""Sorting more rows than memory holds: sorted runs on disk, merged back as one lazy stream.

The split stage orders a dataset's images by URL. Held as pandas objects that costs about 2 kB a
row, 22 GB for CC12M's 10.9M rows. Here rows are sorted RUN_ROWS at a time in Arrow (columnar,
no Python object per value), each sorted run is written to a parquet file in a scratch folder, and
the runs are merged back with heapq: memory holds one run while sorting and one row group of
MERGE_BATCH_ROWS rows per open run while merging. A run file is written in row groups of that size
and read back one group at a time, since Arrow's reader holds a whole row group's column chunks even
when asked for small batches (one group of 32,768 rows per run: ~1 GB at a million URL-list rows).
At most MAX_FAN_IN runs are open at once: with more, they are first merged MAX_FAN_IN at a time into
longer runs (another pass over the rows on disk), so memory stays bounded however many rows there
are. Disk holds all the rows once, compressed (twice while a merge level is written).

Arrow orders strings by their UTF-8 bytes and Python by code points: the same order, so a run
sorted by Arrow merges correctly under Python's comparisons. Keys must not be null.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.parquet import row_groups

RUN_ROWS = 32_768  # rows sorted at once: ~15 MB of Arrow for URL-list rows, twice while sorting
MERGE_BATCH_ROWS = 256  # rows per row group of a run file, held per run as Python dicts while merging (~1 kB each)
MAX_FAN_IN = 64  # runs merged at once (~64 x 256 kB); CC12M's 10.9M rows make 333 runs: one more level


def sort_to_runs(tables: Iterable[pa.Table], keys: list[str], scratch: Path) -> list[Path]:
    """Sort the rows of `tables` (one schema) by `keys`, RUN_ROWS at a time, into run files under
    `scratch`; returns the run files, for `merge_runs`."""
    runs, pending, pending_rows = [], [], 0

    def write_run() -> None:
        run = pa.concat_tables(pending).sort_by([(key, "ascending") for key in keys])
        path = scratch / f"run-{len(runs):05d}.parquet"
        pq.write_table(run, path, row_group_size=MERGE_BATCH_ROWS)
        runs.append(path)

    for table in tables:
        pending.append(table)
        pending_rows += table.num_rows
        if pending_rows >= RUN_ROWS:
            write_run()
            pending, pending_rows = [], 0
    if pending_rows:
        write_run()
    return runs


def merge_runs(runs: list[Path], keys: list[str]) -> Iterator[dict]:
    """The rows of sorted runs as dicts, in `keys` order (ties: in run order, then row order). More
    than MAX_FAN_IN runs are first merged into longer ones (consecutive runs together, which keeps the
    order of ties), and the runs merged are deleted."""
    level = 0
    while len(runs) > MAX_FAN_IN:
        runs = [_merge_to_file(runs[start:start + MAX_FAN_IN], keys,
                               runs[0].parent / f"merged-{level}-{start // MAX_FAN_IN:05d}.parquet")
                for start in range(0, len(runs), MAX_FAN_IN)]
        level += 1
    return heapq.merge(*(_rows(path) for path in runs), key=itemgetter(*keys))


def _rows(path: Path) -> Iterator[dict]:
    """A run's rows, one row group (MERGE_BATCH_ROWS) read at a time."""
    for table in row_groups(path):
        yield from table.to_pylist()


def _merge_to_file(runs: list[Path], keys: list[str], path: Path) -> Path:
    """One longer run from `runs`, written in row groups of MERGE_BATCH_ROWS; the runs are deleted."""
    schema = pq.read_schema(runs[0])
    rows = heapq.merge(*(_rows(run) for run in runs), key=itemgetter(*keys))
    with pq.ParquetWriter(path, schema) as writer:
        while batch := list(itertools.islice(rows, 16 * MERGE_BATCH_ROWS)):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=MERGE_BATCH_ROWS)
    for run in runs:
        run.unlink()
    return path


def grouped(rows: Iterator[dict], key: str) -> Iterator[tuple[object, list[dict]]]:
    """(value, its rows) for each run of equal `key` values in a sorted stream."""
    for value, group in itertools.groupby(rows, key=itemgetter(key)):
        yield value, list(group)
