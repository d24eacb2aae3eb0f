import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from nolabel import augment as A


def _images(n=8, c=1, size=28, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_to_float_images_layouts():
    gray = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    rgb = np.stack([gray, gray + 1, gray + 2], -1)
    assert A.to_float_images(gray).shape == (2, 1, 3, 4)
    x = A.to_float_images(rgb)
    assert x.shape == (2, 3, 3, 4)
    assert x[1, 2, 0, 1] == pytest.approx((gray[1, 0, 1] + 2) / 255)
    with pytest.raises(ValueError):
        A.to_float_images(gray.astype(np.float32))


def test_full_crop_without_flip_is_identity_and_flip_mirrors():
    x = _images()
    same = A.random_resized_crop(x, 28, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    mirrored = A.random_resized_crop(x, 28, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    torch.testing.assert_close(mirrored, x.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(A.horizontal_flip(x, p=1.0), x.flip(-1))
    torch.testing.assert_close(A.horizontal_flip(x, p=0.0), x)


def test_crop_of_a_quarter_area_magnifies_a_region():
    # A crop of a quarter of the area is half the side: a 2-pixel checker pattern becomes 4-pixel blocks.
    theta = A.random_resized_crop_params(100, scale=(0.25, 0.25), ratio=(1.0, 1.0),
                                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(theta[:, 0, 0], torch.full((100,), 0.5))
    assert (theta[:, 0, 2].abs() <= 0.5 + 1e-6).all() and (theta[:, 1, 2].abs() <= 0.5 + 1e-6).all()


def test_seeded_pipelines_are_reproducible_and_stay_in_range():
    x = _images(16, 3, 32)
    for pipeline in (A.SimCLRAugment(24), A.WeakAugment(), A.StrongAugment()):
        a = pipeline(x, torch.Generator().manual_seed(1))
        b = pipeline(x, torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)
        assert a.min() >= 0 and a.max() <= 1
        assert not torch.equal(a, pipeline(x, torch.Generator().manual_seed(2)))
    assert A.SimCLRAugment(24)(x).shape == (16, 3, 24, 24)


def test_color_jitter_factors():
    x = torch.full((4, 1, 5, 5), 0.5)
    torch.testing.assert_close(A.color_jitter(x, p=0.0), x)
    out = A.adjust_brightness(x, torch.tensor([0.0, 0.5, 1.0, 1.5]))
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75]))
    # Contrast blends towards the mean: a constant image does not change.
    torch.testing.assert_close(A.adjust_contrast(x, torch.tensor([0.2, 0.6, 1.4, 2.0])), x)


def test_hue_rotation_keeps_luma_and_zero_shift_is_identity():
    x = _images(6, 3, 8)
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(6)), x, atol=1e-5, rtol=0)
    mid = x * 0.2 + 0.4  # away from the clamp
    shifted = A.adjust_hue(mid, torch.full((6,), 0.3))
    torch.testing.assert_close(A.gray(shifted), A.gray(mid), atol=1e-4, rtol=0)
    assert (shifted - mid).abs().max() > 0.01


def test_grayscale_and_one_channel_noops():
    x = _images(4, 3, 8)
    g = A.random_grayscale(x, p=1.0)
    torch.testing.assert_close(g[:, 0], g[:, 1])
    one = _images(4, 1, 8)
    torch.testing.assert_close(A.random_grayscale(one, p=1.0), one)
    torch.testing.assert_close(A.color_jitter(one, brightness=0, contrast=0, p=1.0), one)


def test_cutout_fills_exactly_one_square_inside_the_image():
    x = torch.ones(50, 1, 16, 16)
    out = A.cutout(x, 6, fill=0.0, generator=torch.Generator().manual_seed(0))
    filled = (out == 0).sum(dim=(1, 2, 3))
    assert (filled <= 36).all() and (filled >= 9).all()
    assert (filled == 36).any()


def test_equalize_matches_pil():
    rng = np.random.default_rng(0)
    pixels = (rng.beta(2, 5, size=(20, 20)) * 255).astype(np.uint8)
    ours = A._equalize(torch.from_numpy(pixels).float().div(255)[None, None], None)
    ref = np.asarray(ImageOps.equalize(Image.fromarray(pixels)), dtype=np.float32) / 255
    np.testing.assert_allclose(ours[0, 0].numpy(), ref, atol=1e-6)


def test_rand_augment_every_op_keeps_shape_and_range():
    x = _images(6, 3, 12)
    for name, op in A.RAND_AUGMENT_OPS.items():
        out = op(x, torch.full((6,), 0.7), torch.ones(6))
        assert out.shape == x.shape, name
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6, name
    with pytest.raises(ValueError, match="unknown"):
        A.rand_augment(x, ops=["nope"])


def test_normalize_repeats_gray_to_three_channels():
    x = torch.full((2, 1, 4, 4), 0.5)
    out = A.normalize(x, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.5]))
