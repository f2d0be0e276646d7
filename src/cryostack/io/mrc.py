"""MRC2014 images, image stacks and volumes (through the ``mrcfile`` package).

Arrays follow :mod:`cryostack.em.grids`: an image is ``(H, W)`` = (y, x), a stack ``(N, H, W)``, a
volume ``(D, H, W)`` = (z, y, x). Files are read permissively: legacy and odd headers (no ``MAP ``
id, unknown machine stamp, ``nversion`` 0, zero pixel size, extended headers, non-standard axis
order) are read with a :class:`~cryostack.io.errors.FormatWarning` where the header is dubious;
files that cannot hold the data their header describes raise
:class:`~cryostack.io.errors.FormatError`. Writers produce files that ``mrcfile.validate`` accepts
and replace the target atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE
from mrcfile.utils import dtype_from_mode

from cryostack.core.files import atomic_path
from cryostack.io.errors import FormatError, FormatWarning

HEADER_BYTES = 1024
_WRITE_DTYPES = {
    np.dtype(t) for t in ("float32", "float16", "int8", "int16", "uint16", "complex64")
}
_PIXEL_RTOL = 1e-4


@dataclass(frozen=True)
class MrcInfo:
    """What an MRC header says, plus the pixel size in effect.

    Attributes:
        path: the file.
        shape: shape of the array returned by the reader, numpy order ((N,) H, W or D, H, W).
        mode: MRC data mode (0 int8, 1 int16, 2 float32, 4 complex64, 6 uint16, 12 float16).
        pixel_size_A: pixel size in effect, Å/px: the caller's override if given, else the
            header's x voxel size; ``None`` when the header has 0 and no override was given.
        header_voxel_size_A: voxel size from the header (cella / (mx, my, mz)), (x, y, z) in Å.
        origin_A: header ``origin`` field, (x, y, z) in Å.
        start_px: header start indices (x, y, z) in voxels (reordered by mapc/mapr/maps).
        ispg: space group (0 image stack, 1 volume, 401 volume stack).
        nversion: format version (20140/20141; 0 in legacy files).
        extended_header_bytes: size of the extended header (``nsymbt``).
        is_stack: the file holds a stack of 2D images.
        is_volume: the file holds one 3D volume.
    """

    path: str
    shape: tuple[int, ...]
    mode: int
    pixel_size_A: float | None
    header_voxel_size_A: tuple[float, float, float]
    origin_A: tuple[float, float, float]
    start_px: tuple[int, int, int]
    ispg: int
    nversion: int
    extended_header_bytes: int
    is_stack: bool
    is_volume: bool


# ---------------------------------------------------------------------------------------------
# Reading


CRYOSTACK_LABEL = b"Created by cryostack".ljust(80)


def _warn(path: Path, message: str) -> None:
    warnings.warn(f"{path}: {message}", FormatWarning, stacklevel=4)


@contextmanager
def _collected_warnings() -> Iterator[list[str]]:
    """Collect the text of warnings raised in the block (e.g. mrcfile's header complaints)."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages.extend(dict.fromkeys(str(w.message) for w in caught))


def _check_size(path: Path, header: Any) -> None:
    """Raise FormatError when the file is too small for the data its header describes."""
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    mode = int(header.mode)
    if min(nx, ny, nz) <= 0:
        raise FormatError(path, f"not an MRC file: header dimensions {nx}x{ny}x{nz}")
    try:
        dtype = dtype_from_mode(mode)
    except ValueError:
        raise FormatError(path, f"not an MRC file: unknown data mode {mode}") from None
    expected = nx * ny * nz * dtype.itemsize
    available = path.stat().st_size - HEADER_BYTES - max(int(header.nsymbt), 0)
    what = "images" if int(header.ispg) == 0 else "sections"
    if available < expected:
        raise FormatError(
            path,
            f"truncated: header says {nz} {what} of {ny}x{nx} {dtype.name} ({expected:,} bytes) "
            f"but file has {max(available, 0):,} bytes of data",
        )
    if available > expected:
        _warn(path, f"{available - expected:,} bytes after the data are ignored")


def _check_extended_header(path: Path, size: int) -> None:
    """Reject files whose extended-header size (either byte order) cannot fit in the file.

    Done before mrcfile so that a non-MRC file is not read as a huge extended header.
    """
    raw = np.frombuffer(_head(path), dtype=HEADER_DTYPE)
    nsymbt = [int(raw["nsymbt"][0]), int(raw.byteswap()["nsymbt"][0])]
    if not any(0 <= n <= size - HEADER_BYTES for n in nsymbt):
        raise FormatError(
            path, f"not an MRC file: extended header size {nsymbt[0]} exceeds the file"
        )


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEADER_BYTES)


@contextmanager
def _open_mmap(path: Path) -> Iterator[Any]:
    """Open an MRC file memory-mapped and read-only, checking it first; warnings name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise FormatError(path, f"not an MRC file: {size} bytes, shorter than the 1024-byte header")
    _check_extended_header(path, size)
    with _collected_warnings() as complaints:
        try:
            with mrcfile.open(str(path), header_only=True, permissive=True) as head:
                header = head.header.copy()
        except (ValueError, OSError) as err:
            raise FormatError(path, f"not a readable MRC file: {err}") from None
    try:
        _check_size(path, header)
    except FormatError as err:
        if complaints:
            raise FormatError(path, f"{err.problem} (header: {'; '.join(complaints)})") from None
        raise
    for message in complaints:
        _warn(path, f"dubious header: {message}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already relayed from the header read above
        try:
            mrc = mrcfile.mmap(str(path), mode="r", permissive=True)
        except (ValueError, OSError) as err:
            raise FormatError(path, f"not a readable MRC file: {err}") from None
    try:
        if mrc.data is None:
            raise FormatError(path, "not a readable MRC file: no data block")
        yield mrc
    finally:
        mrc.close()


def _axis_permutation(path: Path, header: Any, ndim: int) -> tuple[int, ...] | None:
    """Transpose that brings file axes (sections, rows, columns) to (z, y, x), or None."""
    labels = [int(header.maps), int(header.mapr), int(header.mapc)]
    if labels == [3, 2, 1] or ndim != 3:
        return None
    if sorted(labels) != [1, 2, 3]:
        _warn(path, f"invalid axis order mapc/mapr/maps = {labels[::-1]}; assuming 1 2 3")
        return None
    return (labels.index(3), labels.index(2), labels.index(1))


def _classify(path: Path, header: Any, ndim: int) -> tuple[bool, bool]:
    """(is_stack, is_volume) from the header; ``ispg`` alone is unreliable in real files.

    ``.mrcs`` files and files with ``ispg`` 0 are stacks, except that a cube with ``ispg`` 0 and
    ``mz`` = ``nz`` (a common mistake of volume writers) is a volume.
    """
    if ndim != 3:
        return False, False
    ispg, nx, ny, nz, mz = (
        int(header.ispg),
        int(header.nx),
        int(header.ny),
        int(header.nz),
        int(header.mz),
    )
    if path.suffix.lower() == ".mrcs":
        return True, False
    if ispg == 0:
        is_cube_volume = nx == ny == nz and mz == nz
        return not is_cube_volume, is_cube_volume
    return False, True


def _effective_pixel_size(
    path: Path, header_voxel: tuple[float, float, float], override: float | None, ndim: int
) -> float | None:
    """The caller's pixel size wins; warn when the header disagrees, is zero or anisotropic."""
    header_px = header_voxel[0]
    dims = header_voxel if ndim == 3 else header_voxel[:2]
    if header_px > 0 and any(not math.isclose(v, header_px, rel_tol=_PIXEL_RTOL) for v in dims):
        _warn(path, f"anisotropic voxel size {header_voxel} Å; using x = {header_px:g}")
    if not (header_px > 0 and math.isfinite(header_px)):
        if override is None:
            _warn(path, "header pixel size is 0: pixel size unknown (pass pixel_size_A)")
            return None
        _warn(path, f"header pixel size is 0; using the given {override:g} Å")
        return float(override)
    if override is not None:
        if not math.isclose(override, header_px, rel_tol=_PIXEL_RTOL):
            _warn(
                path, f"header pixel size {header_px:g} Å disagrees with the given {override:g} Å"
            )
        return float(override)
    return header_px


def _start_xyz(header: Any) -> tuple[int, int, int]:
    """Header start indices (ncstart, nrstart, nsstart) reordered to (x, y, z) by mapc/mapr/maps."""
    starts = (int(header.nxstart), int(header.nystart), int(header.nzstart))
    labels = (int(header.mapc), int(header.mapr), int(header.maps))
    if sorted(labels) != [1, 2, 3]:
        return starts
    xyz = [0, 0, 0]
    for start, label in zip(starts, labels, strict=True):
        xyz[label - 1] = start
    return (xyz[0], xyz[1], xyz[2])


def _info(path: Path, mrc: Any, shape: tuple[int, ...], pixel_size_A: float | None) -> MrcInfo:
    h = mrc.header
    vs = mrc.voxel_size
    header_voxel = (float(vs.x), float(vs.y), float(vs.z))
    is_stack, is_volume = _classify(path, h, len(shape))
    return MrcInfo(
        path=str(path),
        shape=shape,
        mode=int(h.mode),
        pixel_size_A=_effective_pixel_size(path, header_voxel, pixel_size_A, len(shape)),
        header_voxel_size_A=header_voxel,
        origin_A=(float(h.origin.x), float(h.origin.y), float(h.origin.z)),
        start_px=_start_xyz(h),
        ispg=int(h.ispg),
        nversion=int(h.nversion),
        extended_header_bytes=int(h.nsymbt),
        is_stack=is_stack,
        is_volume=is_volume,
    )


def _as_real_or_complex(array: np.ndarray) -> np.ndarray:
    dtype = np.complex64 if np.iscomplexobj(array) else np.float32
    return np.asarray(array, dtype=dtype)


def read_mrc(
    path: str | os.PathLike[str], pixel_size_A: float | None = None
) -> tuple[np.ndarray, MrcInfo]:
    """Read a whole MRC file.

    Args:
        path: MRC file (image, stack or volume).
        pixel_size_A: pixel size in Å/px that overrides the header (STAR/.cs files are the
            authority; a warning is issued when the header disagrees or has 0).

    Returns:
        ``(data, info)``: data ``(H, W)``, ``(N, H, W)`` or ``(D, H, W)`` as float32 (complex64
        for complex modes), in memory and native byte order; volumes with a non-standard axis
        order are transposed to (z, y, x).

    Raises:
        FormatError: not an MRC file, or truncated.
    """
    p = Path(path)
    with _open_mmap(p) as mrc:
        data = mrc.data
        perm = _axis_permutation(p, mrc.header, data.ndim)
        if perm is not None:
            data = np.transpose(data, perm)
        array = np.ascontiguousarray(_as_real_or_complex(data))
        info = _info(p, mrc, tuple(array.shape), pixel_size_A)
    return array, info


class MrcStack:
    """A memory-mapped MRC stack: images are read on demand, never the whole file.

    Use as a context manager (or call :meth:`close`). A single-image file is a stack of one; a
    volume is a stack of its z sections.
    """

    def __init__(self, path: str | os.PathLike[str], pixel_size_A: float | None = None) -> None:
        self.path = Path(path)
        self._context: AbstractContextManager[Any] | None = _open_mmap(self.path)
        self._mrc = self._context.__enter__()
        data = self._mrc.data
        self._data = data[None] if data.ndim == 2 else data
        if self._data.ndim != 3:
            self.close()
            raise FormatError(self.path, f"not an image stack: data has {data.ndim} dimensions")
        self.info = _info(self.path, self._mrc, tuple(self._data.shape), pixel_size_A)

    def __len__(self) -> int:
        return int(self._data.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of one image in pixels."""
        return int(self._data.shape[1]), int(self._data.shape[2])

    @property
    def pixel_size_A(self) -> float | None:
        return self.info.pixel_size_A

    def read(self, indices: Sequence[int] | np.ndarray | slice) -> np.ndarray:
        """Images at the given 0-based indices, ``(n, H, W)`` float32 (only those are read)."""
        if isinstance(indices, slice):
            return _as_real_or_complex(self._data[indices]).copy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise IndexError(f"{self.path}: image index {int(bad[0])} out of range for {n} images")
        return _as_real_or_complex(self._data[idx])

    def __getitem__(self, index: int) -> np.ndarray:
        """One image, ``(H, W)`` float32."""
        return self.read([index])[0]

    def close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None

    def __enter__(self) -> MrcStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_mrc_stack(path: str | os.PathLike[str], pixel_size_A: float | None = None) -> MrcStack:
    """Open an MRC stack memory-mapped; see :class:`MrcStack`."""
    return MrcStack(path, pixel_size_A)


def read_images(path: str | os.PathLike[str], indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Read selected images (0-based indices) of a stack without loading the rest: ``(n, H, W)``."""
    with open_mrc_stack(path) as stack:
        return stack.read(indices)


# ---------------------------------------------------------------------------------------------
# Writing


def _writable(data: Any) -> np.ndarray:
    array = np.asarray(data)
    if array.dtype not in _WRITE_DTYPES:
        array = array.astype(np.complex64 if np.iscomplexobj(array) else np.float32)
    return np.ascontiguousarray(array)


def write_mrc(
    path: str | os.PathLike[str],
    data: np.ndarray,
    pixel_size_A: float,
    origin_A: tuple[float, float, float] | None = None,
    stack: bool = False,
) -> None:
    """Write an image, stack or volume as MRC2014, atomically.

    Args:
        path: target file (replaced atomically).
        data: ``(H, W)`` image, ``(N, H, W)`` stack (``stack=True``) or ``(D, H, W)`` volume;
            float64 and unsupported integer types are stored as float32.
        pixel_size_A: pixel/voxel size in Å (> 0), stored as cella / (mx, my, mz).
        origin_A: header origin (x, y, z) in Å.
        stack: write 3D data as an image stack (ispg 0) instead of a volume (ispg 1).
    """
    if not pixel_size_A > 0:
        raise ValueError(f"{path}: pixel_size_A must be > 0, got {pixel_size_A}")
    array = _writable(data)
    if array.ndim not in (2, 3):
        raise ValueError(f"{path}: can only write 2D or 3D arrays, got shape {array.shape}")
    target = Path(path)
    with atomic_path(target) as tmp, mrcfile.new(str(tmp), overwrite=True) as mrc:
        mrc.set_data(array)
        if array.ndim == 3:
            if stack:
                mrc.set_image_stack()
            else:
                mrc.set_volume()
        mrc.voxel_size = float(pixel_size_A)
        if origin_A is not None:
            mrc.header.origin = tuple(float(v) for v in origin_A)
        mrc.update_header_stats()
        # mrcfile stamps the creation time into label 0: a fixed label keeps equal data
        # byte-identical, so re-runs reproduce output content hashes.
        mrc.header.label[0] = CRYOSTACK_LABEL
        mrc.header.nlabl = 1


def _stack_header(
    n: int, shape: tuple[int, int], pixel_size_A: float, stats: tuple[float, float, float, float]
) -> bytes:
    """A little-endian MRC2014 header for an ``n``-image float32 stack (ispg 0, mz 1)."""
    h = np.zeros((), dtype=HEADER_DTYPE).view(np.recarray)
    ny, nx = shape
    h.nx, h.ny, h.nz = nx, ny, n
    h.mode = 2
    h.mx, h.my, h.mz = nx, ny, 1
    h.cella = (nx * pixel_size_A, ny * pixel_size_A, pixel_size_A)
    h.cellb = (90.0, 90.0, 90.0)
    h.mapc, h.mapr, h.maps = 1, 2, 3
    h.dmin, h.dmax, h.dmean, h.rms = stats
    h.ispg = 0
    h.nversion = 20141
    h.map = b"MAP "
    h.machst = (0x44, 0x44, 0, 0)
    h.nlabl = 1
    h.label[0] = CRYOSTACK_LABEL
    return h.tobytes()


class MrcStackWriter:
    """Write a large float32 image stack chunk by chunk, then finalise the header atomically.

    Images are appended to a temporary file in the target's folder; :meth:`close` writes the
    header (count, statistics, pixel size) and moves the file onto the target. If the block of a
    ``with`` statement raises, the temporary file is removed and the target is left untouched.

    Example::

        with MrcStackWriter("particles.mrcs", (128, 128), pixel_size_A=1.1) as out:
            for chunk in chunks:        # each (n, 128, 128)
                out.write(chunk)
    """

    def __init__(
        self, path: str | os.PathLike[str], image_shape: tuple[int, int], pixel_size_A: float
    ) -> None:
        if not pixel_size_A > 0:
            raise ValueError(f"{path}: pixel_size_A must be > 0, got {pixel_size_A}")
        self.path = Path(path)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.pixel_size_A = float(pixel_size_A)
        self.n_images = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._min = math.inf
        self._max = -math.inf
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._file.write(b"\0" * HEADER_BYTES)

    def write(self, images: np.ndarray) -> None:
        """Append one ``(H, W)`` image or a chunk ``(n, H, W)``."""
        chunk = np.asarray(images, dtype="<f4")
        if chunk.ndim == 2:
            chunk = chunk[None]
        if chunk.ndim != 3 or tuple(chunk.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.path}: images of shape {chunk.shape} do not match {self.image_shape}"
            )
        if chunk.shape[0] == 0:
            return
        self._file.write(np.ascontiguousarray(chunk).tobytes())
        wide = chunk.astype(np.float64)
        self._sum += float(wide.sum())
        self._sum_sq += float(np.square(wide).sum())
        self._min = min(self._min, float(wide.min()))
        self._max = max(self._max, float(wide.max()))
        self.n_images += int(chunk.shape[0])

    def close(self) -> None:
        """Write the header and move the stack onto the target."""
        if self._file.closed:
            return
        if self.n_images == 0:
            self.abort()
            raise ValueError(f"{self.path}: no images were written")
        count = self.n_images * self.image_shape[0] * self.image_shape[1]
        mean = self._sum / count
        rms = math.sqrt(max(self._sum_sq / count - mean * mean, 0.0))
        header = _stack_header(
            self.n_images, self.image_shape, self.pixel_size_A, (self._min, self._max, mean, rms)
        )
        try:
            self._file.seek(0)
            self._file.write(header)
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard what was written; the target is not touched."""
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> MrcStackWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mrc_stack(
    path: str | os.PathLike[str], chunks: Iterable[np.ndarray], pixel_size_A: float
) -> int:
    """Write an image stack from an iterable of ``(H, W)`` images or ``(n, H, W)`` chunks.

    Memory use is one chunk; the target is replaced atomically. Returns the number of images.
    """
    writer: MrcStackWriter | None = None
    try:
        for chunk in chunks:
            array = np.asarray(chunk)
            if writer is None:
                writer = MrcStackWriter(path, (array.shape[-2], array.shape[-1]), pixel_size_A)
            writer.write(array)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is None:
        raise ValueError(f"{path}: no images to write")
    writer.close()
    return writer.n_images
