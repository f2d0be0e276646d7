"""MRC reading (real EMDB/RELION files), writing (mrcfile.validate), errors and atomic writes."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryostack.io.errors import FormatError, FormatWarning
from cryostack.io.mrc import (
    MrcStackWriter,
    open_mrc_stack,
    read_images,
    read_mrc,
    write_mrc,
    write_mrc_stack,
)

DATA = Path(__file__).resolve().parents[1] / "data"
EMDB_STANDARD_AXES = {
    # file: (voxel size Å, start (x, y, z))
    "EMD-3197.map": (11.4, (-2, 0, 0)),
    "emd_1832.map": (5.7, (-32, -32, -32)),
    "emd_5625.map": (4.23, (-28, -28, -28)),
}


def _valid(path: Path) -> bool:
    return bool(mrcfile.validate(str(path), print_file=io.StringIO()))


def _mrcfile_data(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrcfile's own complaints about legacy headers
        with mrcfile.open(str(path), permissive=True) as mrc:
            return np.array(mrc.data)


@pytest.mark.parametrize("name", sorted(EMDB_STANDARD_AXES))
def test_emdb_maps_read_like_mrcfile(name: str) -> None:
    path = DATA / "emdb" / name
    data, info = read_mrc(path)
    reference = _mrcfile_data(path)
    voxel, start = EMDB_STANDARD_AXES[name]
    assert data.dtype == np.float32
    assert data.shape == reference.shape
    assert info.is_volume and not info.is_stack
    assert info.pixel_size_A == pytest.approx(voxel, rel=1e-6)
    assert info.start_px == start
    assert info.nversion == 0
    d, h, w = data.shape
    for z, y, x in [(0, 0, 0), (d // 2, h // 3, w - 1), (d - 1, h // 2, w // 4)]:
        assert data[z, y, x] == reference[z, y, x]
    assert float(data.mean()) == pytest.approx(float(reference.mean()), rel=1e-6)


def test_emdb_3001_axis_order_is_brought_to_zyx() -> None:
    """mapc/mapr/maps = 3 1 2: columns are z, rows x, sections y; extended header of 160 bytes."""
    path = DATA / "emdb" / "EMD-3001.map"
    with pytest.warns(FormatWarning, match="anisotropic"):
        data, info = read_mrc(path)
    raw = _mrcfile_data(path)  # file order (y, x, z)
    assert raw.shape == (25, 43, 73)
    assert data.shape == (73, 25, 43)
    assert data[5, 10, 20] == raw[10, 20, 5]
    assert data[72, 0, 42] == raw[0, 42, 72]
    assert info.extended_header_bytes == 160
    assert info.ispg == 4
    assert info.start_px == (-21, -12, 0)
    assert info.header_voxel_size_A == pytest.approx((0.44825, 0.3925, 0.45875), rel=1e-5)


def test_relion_stack_without_map_id_warns_and_takes_override() -> None:
    path = DATA / "cryodrgn" / "relion31.mrcs"
    with pytest.warns(FormatWarning) as record:
        data, info = read_mrc(path, pixel_size_A=2.806)
    messages = " ".join(str(w.message) for w in record)
    assert "Map ID string not found" in messages
    assert "machine stamp" in messages
    assert "disagrees" in messages and str(path) in messages
    assert info.pixel_size_A == 2.806
    assert info.header_voxel_size_A[0] == 1.0
    assert info.is_stack and data.shape == (5, 256, 256)
    np.testing.assert_array_equal(data, _mrcfile_data(path))


def test_zero_header_pixel_size_gives_none_with_warning(tmp_path: Path) -> None:
    path = tmp_path / "zero.mrcs"
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(np.ones((2, 8, 8), np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = 0.0
    with pytest.warns(FormatWarning, match="pixel size is 0"):
        _, info = read_mrc(path)
    assert info.pixel_size_A is None
    with pytest.warns(FormatWarning, match="using the given 1.31"):
        _, info = read_mrc(path, pixel_size_A=1.31)
    assert info.pixel_size_A == 1.31


def test_selected_images_are_read_through_a_memory_map() -> None:
    path = DATA / "cryojax" / "trpv1_small_stack.mrcs"
    full, _ = read_mrc(path)
    with open_mrc_stack(path) as stack:
        assert len(stack) == 10 and stack.image_shape == (48, 48)
        assert stack.pixel_size_A == pytest.approx(4.88, rel=1e-6)
        assert isinstance(stack._data, np.memmap)
        np.testing.assert_array_equal(stack.read([7, 2]), full[[7, 2]])
        np.testing.assert_array_equal(stack[9], full[9])
        with pytest.raises(IndexError, match="out of range"):
            stack.read([10])
    np.testing.assert_array_equal(read_images(path, np.array([0, 5])), full[[0, 5]])


@pytest.mark.parametrize(
    ("shape", "stack", "ispg"),
    [((5, 16, 12), True, 0), ((8, 8, 8), False, 1), ((16, 12), False, 0)],
)
def test_written_files_validate_and_read_back(
    tmp_path: Path, shape: tuple[int, ...], stack: bool, ispg: int
) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=shape)  # float64 -> stored as float32
    path = tmp_path / "out.mrc"
    write_mrc(path, data, pixel_size_A=1.34, origin_A=(1.0, 2.0, 3.0), stack=stack)
    assert _valid(path)
    back, info = read_mrc(path)
    np.testing.assert_array_equal(back, data.astype(np.float32))
    assert info.pixel_size_A == pytest.approx(1.34, rel=1e-6)
    assert info.origin_A == (1.0, 2.0, 3.0)
    assert info.ispg == ispg
    assert info.is_stack == stack
    assert [p.name for p in tmp_path.iterdir()] == ["out.mrc"]


def test_stack_writer_chunks_header_stats_and_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = (rng.normal(size=(9, 20, 24)) * 3 + 1).astype(np.float32)
    path = tmp_path / "big.mrcs"
    with MrcStackWriter(path, (20, 24), pixel_size_A=2.5) as out:
        out.write(images[:4])
        out.write(images[4])
        out.write(images[5:])
    assert _valid(path)
    back, info = read_mrc(path)
    np.testing.assert_array_equal(back, images)
    assert info.pixel_size_A == 2.5 and info.is_stack and info.ispg == 0
    with mrcfile.open(str(path)) as mrc:
        assert mrc.header.dmin == images.min() and mrc.header.dmax == images.max()
        assert float(mrc.header.dmean) == pytest.approx(float(images.mean()), rel=1e-5)
        assert float(mrc.header.rms) == pytest.approx(float(images.std()), rel=1e-5)
    assert write_mrc_stack(tmp_path / "gen.mrcs", (im for im in images), 2.5) == 9
    np.testing.assert_array_equal(read_mrc(tmp_path / "gen.mrcs")[0], images)


def test_failed_writer_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "particles.mrcs"
    write_mrc(target, np.zeros((2, 8, 8), np.float32), 1.0, stack=True)
    before = target.read_bytes()

    def chunks():  # a producer that fails half-way, as a crashing job would
        yield np.ones((3, 8, 8), np.float32)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        write_mrc_stack(target, chunks(), 1.0)
    with pytest.raises(ValueError, match="do not match"), MrcStackWriter(target, (8, 8), 1.0) as w:
        w.write(np.ones((1, 8, 8)))
        w.write(np.ones((1, 9, 9)))
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["particles.mrcs"]


def test_truncated_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.mrcs"
    write_mrc(path, np.zeros((10, 64, 64), np.float32), 1.0, stack=True)
    path.write_bytes(path.read_bytes()[: 1024 + 100_000])
    with pytest.raises(FormatError) as err:
        read_mrc(path)
    assert err.value.path == str(path)
    assert str(err.value) == (
        f"{path}: truncated: header says 10 images of 64x64 float32 (163,840 bytes) "
        "but file has 100,000 bytes of data"
    )


def test_non_mrc_files_are_format_errors(tmp_path: Path) -> None:
    short = tmp_path / "short.mrc"
    short.write_text("not an MRC file")
    with pytest.raises(FormatError, match="shorter than the 1024-byte header"):
        read_mrc(short)
    star = DATA / "cryodrgn" / "relion31.6opticsgroups.star"  # text, > 1024 bytes
    with pytest.raises(FormatError, match=r"relion31\.6opticsgroups\.star: not"):
        read_mrc(star)
