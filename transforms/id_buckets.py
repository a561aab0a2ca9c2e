"""Spread ids over buckets by a hash of their bytes, in numpy: the same id lands in the same bucket
on every worker and every night, whatever its type, with no Python per id."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.value_hashes import is_fixed_width, is_variable_width, mixed, value_hashes


def bucketable(kind: pa.DataType) -> bool:
    """Whether ids of this type can be bucketed and sorted: strings, binaries and fixed-width scalars
    that Arrow can sort (not float16 or month-day-nano intervals), or an extension type of such
    storage (a UUID: DuckDB writes them so, and pyarrow reads them as extension<arrow.uuid>)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if isinstance(kind, pa.BaseExtensionType):
        kind = kind.storage_type
    if not (is_variable_width(kind) or pa.types.is_boolean(kind) or is_fixed_width(kind)):
        return False
    try:
        pc.sort_indices(pa.array([], kind))
    except pa.ArrowNotImplementedError:
        return False
    return True


def id_values(ids: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Ids as the join compares them, by their bytes too: a dictionary's values, an extension type's
    storage (Arrow's sorts and comparisons take no extension type), and -0.0 as 0.0 (equal to it,
    with other bytes), so that yesterday's 0.0 is tonight's -0.0."""
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if isinstance(ids.type, pa.BaseExtensionType):
        storage = ids.type.storage_type
        ids = (
            pa.chunked_array([c.storage for c in ids.chunks], storage)
            if isinstance(ids, pa.ChunkedArray)
            else ids.storage
        )
    if pa.types.is_float32(ids.type) or pa.types.is_float64(ids.type):
        ids = pc.add(ids, pa.scalar(0.0, ids.type))
    return ids


def id_buckets(ids: pa.Array, buckets: int) -> np.ndarray:
    """Bucket number in [0, buckets) of each (non-null) id, as int64."""
    if buckets == 1 or len(ids) == 0:
        return np.zeros(len(ids), dtype=np.int64)
    ids = id_values(ids)
    return ((mixed(value_hashes(ids)) >> np.uint64(32)) % np.uint64(buckets)).astype(np.int64)
