"""Columnar storage of item sets: one uncompressed Arrow IPC file (Feather v2) per set.

A set file holds the table of an :class:`~cryostack.core.datamodel.ItemSet` plus, in the schema
metadata under ``cryostack.set``, a canonical JSON object with the set kind, its optics groups
(``OpticsGroup.model_dump``) and ``meta``. Columns listed in :data:`~cryostack.core.datamodel.
SET_COLUMNS` are stored with their declared type (a lossless cast, e.g. int64 ``optics_group`` to
int32). Writes are atomic (temporary file in the same folder, fsync, ``os.replace``) and
deterministic: the table is written in a canonical layout (record batches of 2**20 rows whatever
the input chunking, sorted metadata keys, no timestamps), so the same content gives the same
bytes, and the content hash of a set is the sha256 of its file, the same value as
``cryostack.core.environment.file_sha256``.

Why Arrow IPC, uncompressed: measured on the shared 2-core development VM, 1,000,000 particles x
30 columns (3 path strings with repeats, ints, floats). Format comparison on a 328 MB prototype
table (machine idle), page = 100 rows sorted by a float column:

================================  ===========  ==========================================  ======
format                            write+fsync  page of 100 sorted by a float               file
================================  ===========  ==========================================  ======
Arrow IPC uncompressed, chosen    0.24-0.74 s  20-30 ms warm (before the tuning below)     328 MB
Arrow IPC lz4                     0.5-0.6 s    50-90 ms warm                               194 MB
Parquet snappy                    0.65-0.7 s   370 ms warm, 850 ms with a cold page cache  187 MB
================================  ===========  ==========================================  ======

A page sorted by a column needs the whole sort column but only 100 scattered rows. Parquet (and
compressed IPC) must decode every page/batch holding one of those rows, which for a sorted order
is the whole file; float columns of real data barely compress anyway. Uncompressed IPC is read in
place: the sort and filter columns with ``pread`` (8 MB per float column; memory-mapping them
costs ~300 ms of page faults on a cold cache), the page rows from a memory map advised
``MADV_RANDOM`` (a cold cache then reads ~3,000 4 kB pages, not the whole file: 80-100 ms instead
of 230-280 ms). The million keys are not sorted (a full argsort is ~100 ms here): the page's key
bounds are guessed from a sorted sample of 20,000 keys, checked exactly by counting, and only the
rows between them are sorted, stably (fallback: ``np.partition``, ~10 ms). No sort index is
cached: it was not needed for the target. benchmarks/bench_sets.py on a 377 MB table, machine
loaded (load average 3.5-5 on 2 cores): write 0.45-0.7 s (incl. fsync and sha256; 1.2-2.0 s in
earlier runs at load average 5-7, when the kernel's page-cache writes slowed); page 3-28 ms
warm, 9-26 ms for the first call of a process, 25-40 ms with the file evicted from the page
cache (pyarrow's lazy import of pandas adds ~0.3 s once per process).

Sort order: ascending or descending by value, ties in row order, nulls (and NaN) last in both
directions. Strings sort by code point. Pages come back with a leading ``row_index`` column (int64,
0-based row in the stored set) so that a caller can refer back to items (:func:`take_rows`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from cryostack.core.datamodel import REQUIRED_COLUMNS, SET_COLUMNS, ItemSet, OpticsGroup, SetKind
from cryostack.core.errors import FormatError

SET_METADATA_KEY = b"cryostack.set"
FORMAT_VERSION = 1
ROW_INDEX = "row_index"
_BATCH_ROWS = 1 << 20
_COMPARISONS = {
    "==": "equal",
    "!=": "not_equal",
    "<": "less",
    "<=": "less_equal",
    ">": "greater",
    ">=": "greater_equal",
}
_FILTER_OPS = (*_COMPARISONS, "in", "not in")

FilterTerm = tuple[str, str, Any]
"""A filter condition ``(column, op, value)``; op is one of ==, !=, <, <=, >, >=, in, not in."""


class SetFileError(FormatError):
    """A file is not a readable item set (not Arrow IPC, truncated, no set metadata...)."""


class SetNotFoundError(FileNotFoundError):
    """The set file does not exist."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: item set file not found")


@dataclass(frozen=True)
class SetInfo:
    """What a set file holds, read from its footer without reading the table."""

    path: str
    kind: SetKind
    optics: list[OpticsGroup]
    meta: dict[str, Any]
    num_rows: int
    schema: pa.Schema

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)


# --- schema -------------------------------------------------------------------------------------


def column_type(kind: SetKind, name: str) -> pa.DataType | None:
    """The declared Arrow type of column ``name`` in sets of ``kind`` (None when not declared)."""
    spec = SET_COLUMNS[kind].get(name)
    return None if spec is None else pa.type_for_alias(spec[0])


def empty_set(kind: SetKind, columns: Sequence[str] | None = None) -> ItemSet:
    """An empty set with the declared column types (default: the required columns of ``kind``)."""
    names = list(REQUIRED_COLUMNS[kind] if columns is None else columns)
    fields = []
    for name in names:
        dtype = column_type(kind, name)
        if dtype is None:
            raise ValueError(f"{name!r} is not a declared column of {kind.value}")
        fields.append(pa.field(name, dtype))
    return ItemSet(kind=kind, table=pa.schema(fields).empty_table())


def _canonical_table(table: pa.Table, kind: SetKind) -> pa.Table:
    """Cast declared columns to their declared type (lossless casts only)."""
    for i, name in enumerate(table.column_names):
        dtype = column_type(kind, name)
        if dtype is None or table.schema.field(i).type == dtype:
            continue
        try:
            column = table.column(i).cast(dtype, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"column {name!r} cannot be stored as {dtype}: {exc}") from exc
        table = table.set_column(i, pa.field(name, dtype), column)
    return table


def _metadata_json(item_set: ItemSet) -> bytes:
    body = {
        "format_version": FORMAT_VERSION,
        "kind": SetKind(item_set.kind).value,
        "optics": [g.model_dump(mode="json") for g in item_set.optics],
        "meta": item_set.meta,
    }
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"set meta is not JSON-serialisable: {exc}") from exc
    return text.encode()


# --- writing ------------------------------------------------------------------------------------


class _HashingWriter:
    """A file-like sink that hashes what it writes (so the content hash needs no re-read)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._digest = hashlib.sha256()
        self._written = 0
        self.closed = False

    def write(self, data: Any) -> int:
        self._digest.update(data)
        n = self._file.write(data)
        self._written += n
        return n

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/file system allows it
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_set(item_set: ItemSet, path: str | os.PathLike[str]) -> str:
    """Write ``item_set`` to ``path`` atomically and deterministically; return its sha256 (hex).

    Raises ValueError when a required column is missing, a declared column cannot be cast
    losslessly to its type, the reserved column ``row_index`` is present, or meta is not JSON.
    A failure leaves any previous file at ``path`` untouched and no temporary file behind.
    """
    path = Path(path)
    kind = SetKind(item_set.kind)
    missing = item_set.missing_columns()
    if missing:
        raise ValueError(f"{path}: {kind.value} lacks required columns {missing}")
    if ROW_INDEX in item_set.table.column_names:
        raise ValueError(f"{path}: column name {ROW_INDEX!r} is reserved for page row numbers")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    table = _canonical_table(item_set.table, kind).combine_chunks().unify_dictionaries()
    extra = {k: v for k, v in (table.schema.metadata or {}).items() if k != SET_METADATA_KEY}
    metadata = dict(sorted({**extra, SET_METADATA_KEY: _metadata_json(item_set)}.items()))
    table = table.replace_schema_metadata(metadata)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), _FILE_MODE)
            sink = _HashingWriter(file)
            with (
                pa.PythonFile(sink, mode="w") as stream,
                ipc.new_file(stream, table.schema) as writer,
            ):
                writer.write_table(table, max_chunksize=_BATCH_ROWS)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return sink.hexdigest()


# --- reading ------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SetNotFoundError(path)
    if not path.is_file():
        raise SetFileError(path, "not a file")


def _open(
    path: Path, source: pa.NativeFile, fields: Sequence[int] | None = None
) -> ipc.RecordBatchFileReader:
    options = ipc.IpcReadOptions(included_fields=list(fields)) if fields is not None else None
    try:
        return ipc.open_file(source, options=options)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SetFileError(path, f"not an item set file (Arrow IPC) or truncated: {exc}") from exc


def _parse_metadata(path: Path, schema: pa.Schema) -> tuple[SetKind, list[OpticsGroup], dict]:
    raw = (schema.metadata or {}).get(SET_METADATA_KEY)
    if raw is None:
        raise SetFileError(path, "Arrow file without cryostack set metadata (not an item set)")
    try:
        body = json.loads(raw)
        version = body["format_version"]
        if version > FORMAT_VERSION:
            raise ValueError(f"format version {version} is newer than this cryostack reads")
        kind = SetKind(body["kind"])
        optics = [OpticsGroup.model_validate(g) for g in body["optics"]]
        meta = dict(body["meta"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SetFileError(path, f"invalid set metadata: {exc}") from exc
    return kind, optics, meta


def _field_indices(path: Path, schema: pa.Schema, names: Sequence[str]) -> list[int]:
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; the set has {schema.names}")
    return [schema.get_field_index(n) for n in names]


def _read_table(reader: ipc.RecordBatchFileReader, path: Path) -> pa.Table:
    try:
        return reader.read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise SetFileError(path, f"damaged or truncated item set: {exc}") from exc


def _footer(path: Path) -> tuple[pa.Schema, int]:
    """Schema and row count from the file footer (memory-mapped: no data is read)."""
    _check_file(path)
    reader = _open(path, pa.memory_map(str(path)))
    try:
        return reader.schema, reader.count_rows()
    except (pa.ArrowInvalid, OSError) as exc:
        raise SetFileError(path, f"damaged or truncated item set: {exc}") from exc


def read_set_info(path: str | os.PathLike[str]) -> SetInfo:
    """Kind, optics, meta, number of rows and schema of a set file, without reading its data."""
    path = Path(path)
    schema, num_rows = _footer(path)
    kind, optics, meta = _parse_metadata(path, schema)
    return SetInfo(str(path), kind, optics, meta, num_rows, schema.remove_metadata())


def read_set(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> ItemSet:
    """Read a set (all columns, or ``columns`` in that order); the table is memory-mapped."""
    path = Path(path)
    _check_file(path)
    source = pa.memory_map(str(path))
    schema = _open(path, source).schema
    kind, optics, meta = _parse_metadata(path, schema)
    fields = None if columns is None else _field_indices(path, schema, columns)
    table = _read_table(_open(path, source, fields), path)
    if columns is not None:
        table = table.select(list(columns))
    extra = {k: v for k, v in (schema.metadata or {}).items() if k != SET_METADATA_KEY}
    table = table.replace_schema_metadata(extra or None)
    return ItemSet(kind=kind, table=table, optics=optics, meta=meta)


def set_content_hash(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a set file: the value :func:`write_set` returned when writing it."""
    path = Path(path)
    read_set_info(path)
    digest = hashlib.sha256()
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while n := file.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


# --- pages --------------------------------------------------------------------------------------


def _filter_mask(path: Path, table: pa.Table, terms: Sequence[FilterTerm]) -> npt.NDArray[np.bool_]:
    """Rows where all terms hold (a comparison with null is false)."""
    mask = np.ones(table.num_rows, dtype=bool)
    for term in terms:
        if len(term) != 3 or term[1] not in _FILTER_OPS:
            raise ValueError(
                f"{path}: bad filter term {term!r}; use (column, op, value), op in {_FILTER_OPS}"
            )
        name, op, value = term
        column = table.column(name)
        try:
            if op in ("in", "not in"):
                hit = pc.is_in(column, value_set=pa.array(list(value), type=column.type))
                hit = pc.invert(hit) if op == "not in" else hit
                hit = pc.if_else(pc.is_valid(column), hit, False)
            else:
                scalar = pa.scalar(value, column.type)
                hit = pc.call_function(_COMPARISONS[op], [column, scalar])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError) as exc:
            raise ValueError(
                f"{path}: filter {term!r} does not apply to {column.type}: {exc}"
            ) from exc
        mask &= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    return mask


def _sort_keys(
    path: Path, column: pa.ChunkedArray, descending: bool
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]:
    """Numeric keys whose ascending order is the requested order, and the rows with a key.

    The second value is None when every row has a key (no null, no NaN).
    """
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    dtype = array.type
    if pa.types.is_dictionary(dtype):
        array = array.cast(dtype.value_type)
        dtype = array.type
    valid = array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
    if pa.types.is_floating(dtype):
        keys = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
        finite = ~np.isnan(keys)
        valid = finite if valid is None else valid & finite
        keys = -keys if descending else keys
    elif pa.types.is_integer(dtype) or pa.types.is_boolean(dtype):
        try:
            keys = array.cast(pa.int64()).fill_null(0).to_numpy()
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{path}: cannot sort by {column.type} values: {exc}") from exc
        keys = ~keys if descending else keys
    elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        encoded = pc.dictionary_encode(array)
        rank = np.empty(len(encoded.dictionary), dtype=np.int64)
        rank[pc.array_sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(rank))
        keys = rank[encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)]
        keys = ~keys if descending else keys
    else:
        raise ValueError(f"{path}: cannot sort by a column of type {column.type}")
    if valid is not None and valid.all():
        valid = None
    return keys, valid


def _page_positions(keys: npt.NDArray[Any], offset: int, limit: int) -> npt.NDArray[np.int64]:
    """Positions of entries ``offset..offset+limit`` of ``keys`` in stable ascending order.

    Selects instead of sorting all keys: bounds on the page's keys are guessed from a sorted
    sample (or, if the guess misses the page, found exactly by ``np.partition``); only entries
    between the bounds are sorted, stably, so ties keep position order.
    """
    n = len(keys)
    end = min(offset + limit, n)
    if offset >= end:
        return np.empty(0, dtype=np.int64)
    if n <= 4096:
        return np.argsort(keys, kind="stable")[offset:end].astype(np.int64)
    page = _page_between(keys, offset, end, *_guess_bounds(keys, offset, end))
    if page is None:
        part = np.partition(keys, [offset, end - 1])
        page = _page_between(keys, offset, end, part[offset], part[end - 1])
    assert page is not None  # exact bounds always hold the page
    return page


def _guess_bounds(keys: npt.NDArray[Any], offset: int, end: int) -> tuple[Any, Any]:
    """Keys likely below and above entries ``offset..end`` of the sorted keys (None: no bound).

    From a strided sample of ~20,000 keys, with a margin of 3 binomial standard deviations.
    """
    n = len(keys)
    sample = np.sort(keys[:: max(1, n // 20000)])
    m = sample.size
    low_rank, high_rank = offset / n * m, end / n * m
    low_rank -= 3 * np.sqrt(low_rank * (1 - offset / n)) + 2
    high_rank += 3 * np.sqrt(high_rank * (1 - end / n)) + 2
    low = sample[int(np.floor(low_rank))] if low_rank >= 0 else None
    high = sample[int(np.ceil(high_rank))] if high_rank < m - 1 else None
    return low, high


def _page_between(
    keys: npt.NDArray[Any], offset: int, end: int, low: Any, high: Any
) -> npt.NDArray[np.int64] | None:
    """The page, if all its entries have keys in [low, high] (None: unbounded); else None."""
    n_below = 0 if low is None else int(np.count_nonzero(keys < low))
    if low is None and high is None:
        inside = np.ones(len(keys), dtype=bool)
    elif low is None:
        inside = keys <= high
    else:
        inside = keys >= low if high is None else (keys >= low) & (keys <= high)
    between = np.flatnonzero(inside)
    if n_below > offset or n_below + between.size < end:
        return None
    ordered = between[np.argsort(keys[between], kind="stable")]
    return ordered[offset - n_below : end - n_below].astype(np.int64)


def _page_rows(
    path: Path,
    table: pa.Table,
    num_rows: int,
    sort_by: str | None,
    descending: bool,
    offset: int,
    limit: int,
    filter: Sequence[FilterTerm] | None,
) -> npt.NDArray[np.int64]:
    """Row numbers of the requested page, in page order."""
    mask = _filter_mask(path, table, filter) if filter else None
    if sort_by is None:
        if mask is None:
            return np.arange(min(offset, num_rows), min(offset + limit, num_rows), dtype=np.int64)
        return np.flatnonzero(mask)[offset : offset + limit].astype(np.int64)
    keys, valid = _sort_keys(path, table.column(sort_by), descending)
    use = valid if mask is None else (mask if valid is None else valid & mask)
    if use is None:  # every row has a key: no subset to build
        return _page_positions(keys, offset, limit)
    chosen = np.flatnonzero(use)
    rows = chosen[_page_positions(keys[chosen], offset, limit)]
    if rows.size < limit and valid is not None:  # rows without a key come last, in row order
        no_key = np.flatnonzero(~valid if mask is None else mask & ~valid)
        start = max(0, offset - chosen.size)
        rows = np.concatenate([rows, no_key[start : start + limit - rows.size]])
    return rows.astype(np.int64)


def _take_rows_from_file(
    path: Path, rows: npt.NDArray[np.int64], fields: Sequence[int] | None
) -> pa.Table:
    """Rows of the set file (in the given order), read from a memory map advised random access."""
    with open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    table = _read_table(_open(path, pa.BufferReader(pa.py_buffer(mapped)), fields), path)
    order = np.argsort(rows, kind="stable")
    taken = table.take(pa.array(rows[order]))  # increasing offsets: fewer, sequential page reads
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return taken.take(pa.array(inverse)).replace_schema_metadata(None)


def read_page(
    path: str | os.PathLike[str],
    *,
    sort_by: str | None = None,
    descending: bool = False,
    offset: int = 0,
    limit: int = 100,
    columns: Sequence[str] | None = None,
    filter: Sequence[FilterTerm] | None = None,
) -> pa.Table:
    """One page of rows of a set, optionally filtered and sorted by a column.

    Rows are those passing every ``filter`` term (e.g. ``[("defocus_u_A", ">", 15000)]``),
    ordered by ``sort_by`` (ties in row order, nulls/NaN last; stored order when None); the page
    is entries ``offset`` to ``offset + limit`` of that order (empty past the end). The result
    has a first column ``row_index`` (int64, 0-based row in the set) then ``columns`` (default:
    all). :func:`set_length` with the same filter gives the total number of rows.
    """
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must be >= 0 (got {offset}, {limit})")
    path = Path(path)
    schema, num_rows = _footer(path)
    _parse_metadata(path, schema)
    out_fields = None if columns is None else _field_indices(path, schema, columns)
    needed = list(dict.fromkeys(([sort_by] if sort_by else []) + [t[0] for t in filter or []]))
    small = pa.table({})
    if needed:  # read the key columns with pread: sequential, no page faults on a cold cache
        with pa.OSFile(str(path)) as source:
            small = _read_table(_open(path, source, _field_indices(path, schema, needed)), path)
    rows = _page_rows(path, small, num_rows, sort_by, descending, offset, limit, filter)
    page = _take_rows_from_file(path, rows, out_fields)
    if columns is not None:
        page = page.select(list(columns))
    return page.add_column(0, pa.field(ROW_INDEX, pa.int64()), pa.array(rows, pa.int64()))


def set_length(path: str | os.PathLike[str], *, filter: Sequence[FilterTerm] | None = None) -> int:
    """Number of rows of a set file (passing ``filter`` when given)."""
    path = Path(path)
    if not filter:
        return read_set_info(path).num_rows
    table = read_set(path, columns=list(dict.fromkeys(t[0] for t in filter))).table
    return int(np.count_nonzero(_filter_mask(path, table, filter)))


# --- set algebra --------------------------------------------------------------------------------


def take_rows(item_set: ItemSet, indices: Sequence[int] | npt.ArrayLike | pa.Array) -> ItemSet:
    """Rows ``indices`` (0-based, in that order, or a boolean mask) of a set; same optics/meta."""
    n = item_set.table.num_rows
    if isinstance(indices, pa.Array):
        indices = indices.to_numpy(zero_copy_only=False)
    index = np.asarray(indices)
    if index.dtype == bool:
        if index.shape != (n,):
            raise ValueError(f"boolean mask has shape {index.shape}, the set has {n} rows")
        index = np.flatnonzero(index)
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"row indices must be integers, got {index.dtype}")
    index = index.astype(np.int64).ravel()
    if index.size and (index.min() < 0 or index.max() >= n):
        raise IndexError(f"row indices must be in [0, {n}), got [{index.min()}, {index.max()}]")
    table = item_set.table.take(pa.array(index, pa.int64()))
    return ItemSet(item_set.kind, table, list(item_set.optics), dict(item_set.meta))


def _optics_key(group: OpticsGroup) -> str:
    return json.dumps(
        group.model_dump(mode="json", exclude={"optics_group", "name"}), sort_keys=True
    )


def concat_sets(sets: Sequence[ItemSet], meta: dict[str, Any] | None = None) -> ItemSet:
    """Concatenate sets of one kind (rows in order), merging their optics groups.

    Optics groups with the same values (apart from number and name) become one group; groups
    are renumbered 1, 2, ... in order of first appearance (keeping the first name, made unique),
    and each table's ``optics_group`` column is remapped (a set without optics groups keeps its
    values). Columns missing from some sets are null there. ``meta`` defaults to the first set's.
    """
    if not sets:
        raise ValueError("concat_sets needs at least one set")
    kind = SetKind(sets[0].kind)
    if any(SetKind(s.kind) != kind for s in sets):
        raise ValueError(f"cannot concatenate sets of different kinds: {[s.kind for s in sets]}")
    merged: list[OpticsGroup] = []
    by_key: dict[str, int] = {}
    tables = []
    for item_set in sets:
        mapping: dict[int, int] = {}
        for group in item_set.optics:
            key = _optics_key(group)
            if key not in by_key:
                number = len(merged) + 1
                names = {g.name for g in merged}
                name = group.name if group.name not in names else f"opticsGroup{number}"
                merged.append(group.model_copy(update={"optics_group": number, "name": name}))
                by_key[key] = number
            mapping[group.optics_group] = by_key[key]
        table = _canonical_table(item_set.table, kind)
        if "optics_group" in table.column_names and mapping:
            table = _remap_optics(table, mapping)
        tables.append(table.replace_schema_metadata(None))
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"sets have incompatible columns: {exc}") from exc
    return ItemSet(kind, table, merged, dict(sets[0].meta if meta is None else meta))


def _remap_optics(table: pa.Table, mapping: dict[int, int]) -> pa.Table:
    i = table.column_names.index("optics_group")
    column = table.column(i)
    old = pa.array(list(mapping), column.type)
    new = pa.array(list(mapping.values()), column.type)
    position = pc.index_in(column, value_set=old)
    unknown = pc.and_(pc.is_null(position), pc.is_valid(column))
    if pc.any(unknown).as_py():
        values = pc.unique(pc.filter(column, unknown)).to_pylist()
        raise ValueError(f"optics_group values {values} have no optics group in the set")
    remapped = pc.take(new, position)
    return table.set_column(i, table.schema.field(i), remapped)
