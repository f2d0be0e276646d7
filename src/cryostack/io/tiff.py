"""TIFF movies (frames as pages, through the ``tifffile`` package).

A movie is ``(F, H, W)``: F frames of H rows (y) by W columns (x), in the stored dtype (counting
detectors write uint8/uint16 counts; converting to float is left to the caller so that a movie
does not take four times its size in memory). Frames can be read one at a time with
:func:`open_tiff_movie`. LZW-compressed files (common from EPU/SerialEM) need the optional
``imagecodecs`` package; zlib (deflate) works with the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import tifffile

from cryostack.io.errors import FormatError
from cryostack.io.mrc import atomic_path

_CODEC_HINT = "install the 'imagecodecs' package to read this compression"


def _format_error(path: Path, err: Exception) -> FormatError:
    text = str(err)
    if "imagecodecs" in text:
        return FormatError(path, f"{text}; {_CODEC_HINT}")
    return FormatError(path, f"not a readable TIFF file: {text}")


def _check_complete(path: Path, tif: Any, pages: list[Any], n_frames: int) -> None:
    """FormatError when pages are missing or a page's data lies beyond the end of the file."""
    size = path.stat().st_size
    shaped = tif.shaped_metadata[0].get("shape") if tif.is_shaped and tif.shaped_metadata else None
    if shaped and len(shaped) == 3 and int(shaped[0]) != n_frames:
        tif.close()
        raise FormatError(path, f"truncated: written with {shaped[0]} frames, {n_frames} readable")
    for i, page in enumerate(pages):
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)]
        if ends and max(ends) > size:
            tif.close()
            raise FormatError(
                path, f"truncated: frame {i} needs {max(ends):,} bytes but file has {size:,}"
            )


class TiffMovie:
    """A TIFF movie opened for reading frame by frame; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            pages = list(series.pages)
        except Exception as err:  # tifffile raises several types for broken files
            raise _format_error(self.path, err) from None
        shape = tuple(int(s) for s in series.shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or len(pages) != shape[0]:
            self.close()
            raise FormatError(self.path, f"not a movie of 2D frames: series shape {series.shape}")
        _check_complete(self.path, self._tif, pages, shape[0])
        self._pages = pages
        self.shape: tuple[int, int, int] = (shape[0], shape[1], shape[2])
        self.dtype = np.dtype(series.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of one frame in pixels."""
        return self.shape[1], self.shape[2]

    def __getitem__(self, index: int) -> np.ndarray:
        """One frame ``(H, W)`` in the stored dtype."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.path}: frame {index} out of range for {n} frames")
        page: Any = self._pages[index]
        try:
            return np.asarray(page.asarray())
        except Exception as err:
            raise _format_error(self.path, err) from None

    def read(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Frames at the given 0-based indices (all when None), ``(n, H, W)``."""
        chosen = range(len(self)) if indices is None else indices
        out = np.empty((len(chosen), *self.frame_shape), dtype=self.dtype)
        for k, i in enumerate(chosen):
            out[k] = self[int(i)]
        return out

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> TiffMovie:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_tiff_movie(path: str | os.PathLike[str]) -> TiffMovie:
    """Open a TIFF movie for lazy, frame-by-frame reading; see :class:`TiffMovie`."""
    return TiffMovie(path)


def read_tiff_movie(path: str | os.PathLike[str]) -> np.ndarray:
    """Read all frames of a TIFF movie: ``(F, H, W)`` in the stored dtype."""
    with open_tiff_movie(path) as movie:
        return movie.read()


def write_tiff_movie(
    path: str | os.PathLike[str], frames: np.ndarray, compression: str = "zlib"
) -> None:
    """Write ``(F, H, W)`` frames as a multi-page compressed TIFF, atomically.

    Args:
        path: target file (replaced atomically: temporary file in the same folder + os.replace).
        frames: ``(F, H, W)`` or one ``(H, W)`` frame; integer counts compress best.
        compression: tifffile compression name; "zlib" needs no extra package.
    """
    array = np.asarray(frames)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{path}: frames must be (F, H, W), got shape {array.shape}")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, compression=compression, photometric="minisblack")
