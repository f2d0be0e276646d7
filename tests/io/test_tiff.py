"""TIFF movies: compressed write, full and frame-by-frame read, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryostack.io.errors import FormatError
from cryostack.io.tiff import open_tiff_movie, read_tiff_movie, write_tiff_movie


def _counts(shape: tuple[int, int, int]) -> np.ndarray:
    """Sparse electron counts like a counting detector's frames."""
    return np.random.default_rng(3).poisson(0.8, size=shape).astype(np.uint8)


def test_movie_round_trip_is_exact_and_compressed(tmp_path: Path) -> None:
    frames = _counts((12, 128, 96))
    path = tmp_path / "movie.tif"
    write_tiff_movie(path, frames)
    back = read_tiff_movie(path)
    assert back.dtype == np.uint8 and back.shape == (12, 128, 96)
    np.testing.assert_array_equal(back, frames)
    assert path.stat().st_size < 0.6 * frames.nbytes
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 12
        assert tif.pages[0].compression.name in ("ADOBE_DEFLATE", "DEFLATE")
    assert [p.name for p in tmp_path.iterdir()] == ["movie.tif"]


def test_frames_are_read_one_at_a_time(tmp_path: Path) -> None:
    frames = _counts((6, 32, 40)).astype(np.uint16) * 300
    path = tmp_path / "movie.tiff"
    write_tiff_movie(path, frames)
    with open_tiff_movie(path) as movie:
        assert len(movie) == 6 and movie.frame_shape == (32, 40) and movie.dtype == np.uint16
        np.testing.assert_array_equal(movie[4], frames[4])
        np.testing.assert_array_equal(movie.read([5, 0]), frames[[5, 0]])
        with pytest.raises(IndexError):
            movie[6]


def test_single_frame_is_a_one_frame_movie(tmp_path: Path) -> None:
    frame = _counts((1, 16, 16))[0]
    write_tiff_movie(tmp_path / "one.tif", frame)
    assert read_tiff_movie(tmp_path / "one.tif").shape == (1, 16, 16)


def test_not_a_tiff_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "movie.tif"
    path.write_bytes(b"MRC?" * 400)
    with pytest.raises(FormatError, match=r"movie\.tif: not a readable TIFF"):
        read_tiff_movie(path)


def test_truncated_tiff_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "movie.tif"
    write_tiff_movie(path, _counts((4, 64, 64)))
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(FormatError, match=r"movie\.tif"):
        read_tiff_movie(path)
