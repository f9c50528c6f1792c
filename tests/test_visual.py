"""``visual``: 8-bit rounding of [-1, 1] pixels, PSNR (peak-to-peak 2), and the image panel with its
error columns (what ``decinv invert --png`` and ``decinv demo`` draw)."""

import math

import numpy as np
import pytest
import torch

from decinv_fast.visual import error_image, panel, psnr, quantize, to_uint8


def test_to_uint8_rounds_to_the_nearest_level_and_clamps():
    step = 1 / 127.5
    pixels = torch.tensor([-1.5, -1.0, -1 + 0.6 * step, -1 + 0.4 * step, 0.0, 1 - 0.4 * step, 1.0, 2.0])
    assert to_uint8(pixels).tolist() == [0, 0, 1, 0, 128, 255, 255, 255]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_quantize_lands_on_the_256_levels_and_keeps_the_dtype(dtype):
    x = torch.linspace(-1.2, 1.2, 1001, dtype=dtype)
    q = quantize(x)
    assert q.dtype == dtype
    assert float(q.min()) == -1.0 and float(q.max()) == 1.0
    levels = (q.double() + 1) * 127.5
    assert levels.round().unique().numel() == 256
    assert float((q.double() - x.double().clamp(-1, 1)).abs().max()) <= 0.5 / 127.5 + 0.01


def test_psnr_is_in_db_of_a_peak_to_peak_2_range():
    truth = torch.zeros(2, 3, 4, 4)
    assert psnr(truth + 0.02, truth) == pytest.approx(10 * math.log10(4 / 0.02**2))  # 40 dB
    assert psnr(truth, truth) == math.inf
    ones = torch.ones(2, 3, 4, 4)
    assert psnr(ones * 1.5, ones) == math.inf  # an estimate beyond the range is clamped, as an image file stores it


def test_panel_lays_titled_columns_side_by_side_and_scales_them():
    black, white = torch.full((3, 4, 20), -1.0), torch.full((3, 4, 20), 1.0)
    image = panel({"black": black, "white": white}, scale=2)
    assert image.size == (2 * 40, 14 + 8)  # two 40-pixel columns under a 14-pixel title row
    pixels = np.asarray(image)
    assert (pixels[14:, :40] == 0).all() and (pixels[14:, 40:] == 255).all()
    assert (pixels[:14] < 255).any() and (pixels[:14, :40] < 255).any()  # the titles, black on white


def test_panel_enlarges_narrow_images_until_each_title_fits_its_column():
    """A 32-pixel image under "error x10 (inverted)" (91 pixels of text): each title stays over its own
    column, not over the next."""
    tiles = {"input": torch.full((3, 32, 32), -1.0), "error x10 (inverted)": torch.full((3, 32, 32), -1.0)}
    image = panel(tiles)
    assert image.size == (2 * 128, 14 + 128)  # the smallest whole factor that fits 91 + 6 pixels: 4
    title = np.asarray(image)[:14]
    inked = np.nonzero((title < 255).any(axis=(0, 2)))[0]
    assert inked.max() < 2 * 128 and (inked[inked >= 128] >= 128 + 3).all()  # the second title starts in its column
    assert inked[inked < 128].max() < 128 - 3  # the first ends before the second column
    assert panel(tiles, scale=5).size == (2 * 160, 14 + 160)  # a larger scale asked for is kept


def test_error_image_is_black_at_no_error_and_white_from_2_over_gain():
    truth = torch.zeros(1, 2, 2)
    estimate = torch.tensor([[[0.05, -0.1], [0.5, 0.0]]])
    torch.testing.assert_close(error_image(estimate, truth), torch.tensor([[[-0.5, 0.0], [1.0, -1.0]]]))
    torch.testing.assert_close(error_image(estimate, truth, gain=1.0), torch.tensor([[[-0.95, -0.9], [-0.5, -1.0]]]))


def test_to_uint8_refuses_pixels_that_are_not_floats_in_minus_one_to_one():
    """8-bit pixels (e.g. a generated image already converted) would saturate: 100 read as 100 in [-1, 1]."""
    with pytest.raises(TypeError, match="pixels must be a float tensor in .-1, 1., got torch.uint8"):
        to_uint8(torch.tensor([0, 100, 255], dtype=torch.uint8))
    with pytest.raises(TypeError, match="got list"):
        to_uint8([0.5])
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
