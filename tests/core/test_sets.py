"""Tests of item-set storage: round trip, determinism, atomic writes, pages, set algebra, errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryostack.core import sets
from cryostack.core.datamodel import ItemSet, OpticsGroup, SetKind
from cryostack.core.sets import (
    ROW_INDEX,
    SetFileError,
    SetNotFoundError,
    concat_sets,
    empty_set,
    read_page,
    read_set,
    read_set_info,
    set_content_hash,
    set_length,
    take_rows,
    write_set,
)

N_ROWS = 6000  # above the size where read_page switches from argsort to partition


def particle_set(n: int = N_ROWS, seed: int = 0) -> ItemSet:
    """Particles with ties (rounded defocus), NaN, nulls, repeated strings, two optics groups."""
    rng = np.random.default_rng(seed)
    defocus = np.round(rng.normal(15000.0, 2000.0, n), -2)  # ~100 distinct values: many ties
    defocus[rng.choice(n, max(1, n // 150), replace=False)] = np.nan  # 40 of 6000
    score_mask = rng.random(n) < 0.05
    table = pa.table(
        {
            "image_path": pa.array([f"Extract/job007/mic_{i % 37:03d}.mrcs" for i in range(n)]),
            "image_index": pa.array(np.arange(n) % 200, pa.int64()),
            "micrograph_name": pa.array([f"mic_{(i * 7) % 53:03d}" for i in range(n)]),
            "optics_group": pa.array(1 + (np.arange(n) % 2), pa.int32()),
            "defocus_u_A": pa.array(defocus, pa.float64()),
            "class_id": pa.array(rng.integers(1, 6, n), pa.int32()),
            "ctf_fit_score": pa.array(rng.random(n), pa.float64(), mask=score_mask),
            "is_good": pa.array(rng.random(n) < 0.5, pa.bool_()),
            "note": pa.array([None if i % 11 == 0 else f"n{i % 5}" for i in range(n)], pa.string()),
            "weight_f32": pa.array(rng.random(n).astype(np.float32)),
        }
    )
    optics = [
        OpticsGroup(optics_group=1, name="og1", pixel_size_A=1.06, image_size_px=256),
        OpticsGroup(
            optics_group=2,
            name="og2",
            pixel_size_A=0.83,
            voltage_kV=200.0,
            cs_mm=1.4,
            micrograph_pixel_size_A=0.83,
            dose_per_frame_e_A2=1.2,
            gain_reference_path="gain.mrc",
            beam_tilt_x_mrad=0.3,
        ),
    ]
    meta = {"source": "run_data.star", "params": {"box_px": 256, "bin": [1, 2]}, "note": "Å"}
    return ItemSet(SetKind.PARTICLES, table, optics, meta)


def same_table(a: pa.Table, b: pa.Table) -> bool:
    """Equal schema and values, NaN equal to NaN (``pa.Table.equals`` treats NaN as unequal)."""
    return a.schema == b.schema and a.to_pandas().equals(b.to_pandas())


def reference_order(values: list, descending: bool) -> list[int]:
    """Row numbers in the documented order: by value, ties in row order, null/NaN last."""

    def missing(v: object) -> bool:
        return v is None or (isinstance(v, float) and np.isnan(v))

    present = [i for i, v in enumerate(values) if not missing(v)]
    present.sort(key=lambda i: values[i], reverse=descending)  # stable: ties keep row order
    return present + [i for i, v in enumerate(values) if missing(v)]


# --- round trip, determinism, atomicity -----------------------------------------------------------


def test_round_trip_keeps_table_types_optics_and_meta(tmp_path: Path) -> None:
    item_set = particle_set()
    path = tmp_path / "particles.cset"
    write_set(item_set, path)
    back = read_set(path)
    assert back.kind is SetKind.PARTICLES
    assert back.table.schema == item_set.table.schema
    assert same_table(back.table, item_set.table)
    assert back.optics == item_set.optics
    assert back.meta == item_set.meta
    subset = read_set(path, columns=["defocus_u_A", "image_path"])
    assert subset.table.column_names == ["defocus_u_A", "image_path"]
    assert subset.table.column("image_path").equals(item_set.table.column("image_path"))


def test_info_and_length_without_reading_data(tmp_path: Path) -> None:
    item_set = particle_set()
    path = tmp_path / "p.cset"
    write_set(item_set, path)
    info = read_set_info(path)
    assert (info.kind, info.num_rows, info.meta) == (SetKind.PARTICLES, N_ROWS, item_set.meta)
    assert info.column_names == item_set.table.column_names
    assert [g.pixel_size_A for g in info.optics] == [1.06, 0.83]
    assert set_length(path) == N_ROWS


def test_declared_columns_are_cast_to_their_type_losslessly(tmp_path: Path) -> None:
    table = pa.table(
        {"image_path": ["a.mrcs", "b.mrcs"], "image_index": [0, 1], "optics_group": [1, 1]}
    )
    assert table.schema.field("optics_group").type == pa.int64()
    path = tmp_path / "p.cset"
    write_set(ItemSet(SetKind.PARTICLES, table), path)
    assert read_set(path).table.schema.field("optics_group").type == pa.int32()
    lossy = table.set_column(2, "optics_group", pa.array([1.5, 1.0]))
    with pytest.raises(ValueError, match="optics_group"):
        write_set(ItemSet(SetKind.PARTICLES, lossy), path)


def test_write_is_deterministic_and_hash_is_file_sha256(tmp_path: Path) -> None:
    item_set = particle_set()
    h1 = write_set(item_set, tmp_path / "a.cset")
    h2 = write_set(particle_set(), tmp_path / "b.cset")
    data = (tmp_path / "a.cset").read_bytes()
    assert data == (tmp_path / "b.cset").read_bytes()
    assert h1 == h2 == hashlib.sha256(data).hexdigest() == set_content_hash(tmp_path / "a.cset")
    # the same content chunked differently in memory gives the same file
    table = item_set.table
    rechunked = pa.concat_tables([table.slice(0, 1000), table.slice(1000)])
    assert rechunked.column(0).num_chunks == 2
    h3 = write_set(
        ItemSet(SetKind.PARTICLES, rechunked, item_set.optics, item_set.meta), tmp_path / "c.cset"
    )
    assert h3 == h1
    # any change of content changes the hash
    changed_meta = ItemSet(SetKind.PARTICLES, table, item_set.optics, {"source": "other"})
    assert write_set(changed_meta, tmp_path / "d.cset") != h1
    changed_row = take_rows(item_set, np.r_[1:N_ROWS])
    assert write_set(changed_row, tmp_path / "e.cset") != h1


def test_multi_batch_files_read_and_page_like_single_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    item_set = particle_set()
    write_set(item_set, tmp_path / "one.cset")
    monkeypatch.setattr(sets, "_BATCH_ROWS", 1000)
    write_set(item_set, tmp_path / "many.cset")
    assert read_set(tmp_path / "many.cset").table.column(0).num_chunks == 6
    assert same_table(read_set(tmp_path / "many.cset").table, item_set.table)
    for offset in (0, 2950, 5990):
        one = read_page(tmp_path / "one.cset", sort_by="defocus_u_A", offset=offset)
        many = read_page(tmp_path / "many.cset", sort_by="defocus_u_A", offset=offset)
        assert same_table(many, one)


def test_failed_write_keeps_previous_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.cset"
    old_hash = write_set(particle_set(seed=0), path)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(OSError, match="injected"):
            write_set(particle_set(seed=1), path)
    assert sorted(os.listdir(tmp_path)) == ["p.cset"]
    assert set_content_hash(path) == old_hash
    bad_meta = ItemSet(SetKind.PARTICLES, particle_set().table, meta={"x": object()})
    with pytest.raises(ValueError, match="JSON"):
        write_set(bad_meta, path)
    assert sorted(os.listdir(tmp_path)) == ["p.cset"]
    assert set_content_hash(path) == old_hash


# --- pages ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ItemSet]:
    path = tmp_path_factory.mktemp("sets") / "particles.cset"
    item_set = particle_set()
    write_set(item_set, path)
    return path, item_set


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize(
    ("column", "offsets"),
    [
        ("defocus_u_A", [0, 100, 3000, 5940, 5950]),  # float with ties; 40 NaN at the end
        ("ctf_fit_score", [0, 5650, 5700]),  # float with nulls (~300)
        ("class_id", [0, 1234, 5900]),  # int32, 5 values: heavy ties
        ("note", [0, 2500, 5400, 5950]),  # strings with nulls
        ("is_good", [0, 2999]),
    ],
)
def test_page_order_matches_reference(
    stored: tuple[Path, ItemSet], column: str, offsets: list[int], descending: bool
) -> None:
    path, item_set = stored
    expected = reference_order(item_set.table.column(column).to_pylist(), descending)
    for offset in offsets:
        page = read_page(path, sort_by=column, descending=descending, offset=offset, limit=100)
        rows = page.column(ROW_INDEX).to_pylist()
        assert rows == expected[offset : offset + 100], (column, offset)
        assert same_table(page.drop_columns([ROW_INDEX]), item_set.table.take(rows))


def test_page_selection_equals_stable_argsort_on_adversarial_keys() -> None:
    rng = np.random.default_rng(3)
    n = 100_000
    strided = rng.random(n)
    strided[:: n // 20000] = 1e9  # the strided sample sees only these: the guessed bounds miss
    low, high = sets._guess_bounds(strided, 50_000, 50_100)
    assert sets._page_between(strided, 50_000, 50_100, low, high) is None  # exact fallback used
    cases = {
        "distinct": rng.normal(size=n),
        "all equal": np.zeros(n),
        "sorted": np.arange(n, dtype=np.float64),
        "reversed": np.arange(n, 0, -1, dtype=np.int64),
        "few values": rng.integers(0, 3, n),
        "strided": strided,
    }
    for name, keys in cases.items():
        expected = np.argsort(keys, kind="stable")
        for offset in (0, 1, 33_333, 50_000, n - 100, n - 1):
            page = sets._page_positions(keys, offset, 100)
            assert page.tolist() == expected[offset : offset + 100].tolist(), (name, offset)


def test_pages_tile_the_sorted_set(stored: tuple[Path, ItemSet]) -> None:
    path, _ = stored
    rows = [
        r
        for offset in range(0, N_ROWS, 700)
        for r in read_page(path, sort_by="defocus_u_A", offset=offset, limit=700)[
            ROW_INDEX
        ].to_pylist()
    ]
    assert sorted(rows) == list(range(N_ROWS))


def test_page_without_sort_is_stored_order_and_columns_select(stored: tuple[Path, ItemSet]) -> None:
    path, item_set = stored
    page = read_page(path, offset=10, limit=5, columns=["micrograph_name", "image_index"])
    assert page.column_names == [ROW_INDEX, "micrograph_name", "image_index"]
    assert page[ROW_INDEX].to_pylist() == [10, 11, 12, 13, 14]
    assert (
        page["micrograph_name"].to_pylist() == item_set.table["micrograph_name"][10:15].to_pylist()
    )


def test_page_past_the_end_is_empty_with_columns(stored: tuple[Path, ItemSet]) -> None:
    path, _ = stored
    tail = read_page(path, sort_by="defocus_u_A", offset=N_ROWS - 3, limit=100)
    assert tail.num_rows == 3
    for kwargs in ({"sort_by": "defocus_u_A"}, {}):
        page = read_page(path, offset=N_ROWS + 10, **kwargs)  # type: ignore[arg-type]
        assert page.num_rows == 0
        assert page.column_names == [ROW_INDEX, *read_set_info(path).column_names]
    assert read_page(path, limit=0).num_rows == 0
    with pytest.raises(ValueError, match="offset"):
        read_page(path, offset=-1)


def test_filter_then_sort(stored: tuple[Path, ItemSet]) -> None:
    path, item_set = stored
    table = item_set.table
    terms = [("defocus_u_A", ">", 15000), ("class_id", "in", [2, 3]), ("note", "!=", "n1")]
    defocus = table["defocus_u_A"].to_pylist()
    keep = [
        i
        for i in range(N_ROWS)
        if defocus[i] is not None
        and defocus[i] > 15000
        and table["class_id"][i].as_py() in (2, 3)
        and table["note"][i].as_py() not in (None, "n1")  # null != "n1" is null: excluded
    ]
    assert 300 < len(keep) < 2000
    assert set_length(path, filter=terms) == len(keep)
    expected = sorted(keep, key=lambda i: (-defocus[i], i))
    page = read_page(
        path, sort_by="defocus_u_A", descending=True, filter=terms, offset=50, limit=80
    )
    assert page[ROW_INDEX].to_pylist() == expected[50:130]
    unsorted = read_page(path, filter=[("micrograph_name", "==", "mic_007")], limit=N_ROWS)
    names = table["micrograph_name"].to_pylist()
    assert unsorted[ROW_INDEX].to_pylist() == [i for i in range(N_ROWS) if names[i] == "mic_007"]
    not_in = read_page(path, filter=[("class_id", "not in", [1, 2, 3, 4])], limit=N_ROWS)
    assert set(not_in["class_id"].to_pylist()) == {5}


def test_bad_page_requests_name_the_problem(stored: tuple[Path, ItemSet]) -> None:
    path, _ = stored
    with pytest.raises(ValueError, match=r"no column.*defocus_x"):
        read_page(path, sort_by="defocus_x")
    with pytest.raises(ValueError, match="bad filter term"):
        read_page(path, filter=[("class_id", "~", 3)])
    with pytest.raises(ValueError, match="does not apply"):
        read_page(path, filter=[("class_id", ">", "three")])
    with pytest.raises(ValueError, match="no column"):
        read_page(path, columns=["nope"])


# --- set algebra ---------------------------------------------------------------------------------


def test_take_rows_by_index_and_mask() -> None:
    item_set = particle_set(n=50)
    picked = take_rows(item_set, [7, 3, 3, 49])
    assert picked.table["image_index"].to_pylist() == [7, 3, 3, 49]
    assert picked.optics == item_set.optics and picked.meta == item_set.meta
    mask = item_set.table["class_id"].to_numpy() == 2
    by_mask = take_rows(item_set, mask)
    assert by_mask.table["class_id"].to_pylist() == [2] * int(mask.sum())
    assert len(take_rows(item_set, [])) == 0
    with pytest.raises(IndexError):
        take_rows(item_set, [50])
    with pytest.raises(ValueError, match="mask"):
        take_rows(item_set, np.ones(49, dtype=bool))


def test_concat_merges_and_renumbers_optics() -> None:
    a = particle_set(n=10, seed=1)  # groups 1 (1.06 Å) and 2 (0.83 Å, 200 kV)
    b_optics = [
        OpticsGroup(optics_group=1, name="og1", pixel_size_A=1.5),  # new values, name taken
        OpticsGroup(optics_group=4, name="other", pixel_size_A=1.06, image_size_px=256),  # = a's 1
    ]
    b_table = particle_set(n=6, seed=2).table.drop_columns(["note"])
    b_table = b_table.set_column(3, "optics_group", pa.array([1, 4, 4, 1, 1, 4], pa.int32()))
    b = ItemSet(SetKind.PARTICLES, b_table, b_optics, {"from": "b"})
    merged = concat_sets([a, b])
    assert len(merged) == 16
    assert [(g.optics_group, g.name, g.pixel_size_A) for g in merged.optics] == [
        (1, "og1", 1.06),
        (2, "og2", 0.83),
        (3, "opticsGroup3", 1.5),
    ]
    assert merged.table["optics_group"].to_pylist()[10:] == [3, 1, 1, 3, 3, 1]
    assert merged.table["optics_group"].to_pylist()[:10] == a.table["optics_group"].to_pylist()
    assert merged.table["note"].to_pylist()[10:] == [None] * 6  # column missing in b
    assert merged.meta == a.meta
    with pytest.raises(ValueError, match="different kinds"):
        concat_sets([a, empty_set(SetKind.MICROGRAPHS)])
    orphan = ItemSet(SetKind.PARTICLES, b_table, b_optics[:1])
    with pytest.raises(ValueError, match=r"optics_group values \[4\]"):
        concat_sets([a, orphan])


def test_empty_set_has_typed_required_columns(tmp_path: Path) -> None:
    empty = empty_set(SetKind.PARTICLES)
    assert empty.table.schema == pa.schema(
        [("image_path", pa.string()), ("image_index", pa.int64()), ("optics_group", pa.int32())]
    )
    assert empty_set(SetKind.COORDINATES, ["micrograph_name", "score"]).table.schema.types == [
        pa.string(),
        pa.float64(),
    ]
    with pytest.raises(ValueError, match="not a declared column"):
        empty_set(SetKind.MOVIES, ["defocus_u_A"])
    path = tmp_path / "empty.cset"
    write_set(empty, path)
    assert read_set(path).table.equals(empty.table)
    assert read_page(path, sort_by="image_index").num_rows == 0
    assert set_length(path) == 0


# --- errors --------------------------------------------------------------------------------------


def test_bad_files_raise_clear_errors(tmp_path: Path, stored: tuple[Path, ItemSet]) -> None:
    missing = tmp_path / "missing.cset"
    with pytest.raises(SetNotFoundError, match=r"missing\.cset"):
        read_set(missing)
    with pytest.raises(FileNotFoundError):
        read_page(missing)
    text = tmp_path / "notes.txt"
    text.write_text("not a set\n")
    with pytest.raises(SetFileError, match=r"notes\.txt.*not an item set"):
        read_set(text)
    plain = tmp_path / "plain.arrow"
    with (
        pa.OSFile(str(plain), "wb") as sink,
        pa.ipc.new_file(sink, pa.schema([("a", pa.int64())])) as w,
    ):
        w.write_table(pa.table({"a": [1, 2]}))
    with pytest.raises(SetFileError, match="without cryostack set metadata"):
        read_set_info(plain)
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"a": [1]}), parquet)
    with pytest.raises(ValueError, match=r"p\.parquet"):
        read_set(parquet)
    data = stored[0].read_bytes()
    for cut in (len(data) // 2, len(data) - 8):
        truncated = tmp_path / f"cut{cut}.cset"
        truncated.write_bytes(data[:cut])
        for read in (read_set, read_set_info, read_page, set_content_hash):
            with pytest.raises(SetFileError, match=rf"cut{cut}\.cset"):
                read(truncated)
    with pytest.raises(SetFileError, match="not a file"):
        read_set(tmp_path)


def test_write_rejects_incomplete_sets(tmp_path: Path) -> None:
    path = tmp_path / "p.cset"
    no_index = pa.table({"image_path": ["a"], "optics_group": pa.array([1], pa.int32())})
    with pytest.raises(ValueError, match="image_index"):
        write_set(ItemSet(SetKind.PARTICLES, no_index), path)
    reserved = empty_set(SetKind.PARTICLES).table.append_column(ROW_INDEX, pa.array([], pa.int64()))
    with pytest.raises(ValueError, match="reserved"):
        write_set(ItemSet(SetKind.PARTICLES, reserved), path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_set(empty_set(SetKind.PARTICLES), tmp_path / "no_such_folder" / "p.cset")
