"""Reading the data stages' parquet files in bounded memory: one row group at a time.

Every list the data stages stream (URL lists, a split's pairs, sorted run files) is written in row
groups of a bounded number of rows and read back here. Not ParquetFile.iter_batches: its reader reads
row groups ahead on other threads, unboundedly while the consumer (a sort, a tokenizer) is slower,
about 250 MB at a million URL-list rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The file's rows (`columns`, or all), a row group at a time."""
    file = pq.ParquetFile(path)
    for group in range(file.num_row_groups):
        yield file.read_row_group(group, columns=columns)
