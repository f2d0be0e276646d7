"""Tile-averaged power spectra."""

from __future__ import annotations

import math

import torch

from cryostack.em.spectra import (
    centred_power_spectrum,
    extract_tiles,
    radial_average_spectrum,
    tile_power_spectrum,
)


def test_white_noise_spectrum_is_flat_at_its_variance() -> None:
    gen = torch.Generator().manual_seed(0)
    micrograph = 2.0 * torch.randn(512, 512, generator=gen)
    spectrum = tile_power_spectrum(micrograph, 64, overlap=0.5)
    assert spectrum.shape == (64, 33)
    profile = radial_average_spectrum(spectrum)
    assert profile.shape == (33,)
    assert (profile[2:] / 4.0 - 1).abs().max() < 0.1  # variance 4


def test_sinusoid_peaks_at_its_frequency() -> None:
    n, tile = 256, 64
    x = torch.arange(n, dtype=torch.float32)
    # 8 cycles per 64 px tile along x; batched over two micrographs
    micrographs = torch.stack([torch.cos(2 * math.pi * x / 8).expand(n, n)] * 2)
    spectrum = tile_power_spectrum(micrographs, tile)
    assert spectrum.shape == (2, tile, tile // 2 + 1)
    peak = torch.nonzero(spectrum[0] == spectrum[0].max())
    assert peak.tolist() == [[0, 8]]
    centred = centred_power_spectrum(micrographs[0], tile)
    assert centred.shape == (tile, tile)
    assert centred[32, 40] == centred.max() and torch.isclose(centred[32, 24], centred[32, 40])


def test_tiles_overlap_and_bad_input() -> None:
    image = torch.arange(100.0).reshape(10, 10)
    tiles = extract_tiles(image, 4, overlap=0.5)  # step 2 -> 4 x 4 tiles
    assert tiles.shape == (16, 4, 4)
    assert torch.equal(tiles[1], image[0:4, 2:6])
    try:
        extract_tiles(image, 20)
    except ValueError as err:
        assert "exceeds" in str(err)
    else:
        raise AssertionError("expected ValueError")
