"""Reading what users have, writing atomically, and the colour transforms."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import images
from conftest import STYLE_A, smooth_image
from errors import UserError

RGB = (np.random.default_rng(1).uniform(0, 255, (10, 12, 3))).astype(np.uint8)


def write_png16(path, pixels):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def test_rgb_is_read_as_float_0_255(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    image = images.load_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == (10, 12, 3)
    np.testing.assert_array_equal(image, RGB)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(RGB[..., 0]).save(tmp_path / "g.png")
    image = images.load_image(tmp_path / "g.png")
    assert image.shape == (10, 12, 3)
    np.testing.assert_array_equal(image[..., 0], RGB[..., 0])
    np.testing.assert_array_equal(image[..., 2], RGB[..., 0])


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.dstack([RGB, np.zeros((10, 12), np.uint8)])
    rgba[:, :6, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    image = images.load_image(tmp_path / "t.png")
    np.testing.assert_array_equal(image[:, :6], RGB[:, :6])
    np.testing.assert_array_equal(image[:, 6:], 255)


def test_palette_image_is_expanded(tmp_path):
    Image.fromarray(RGB).convert("P").save(tmp_path / "p.png")
    image = images.load_image(tmp_path / "p.png")
    palette = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(image, palette)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    gray16 = (RGB[..., 0].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    image = images.load_image(tmp_path / "g16.png")
    np.testing.assert_allclose(image[..., 1], RGB[..., 0], atol=0.01)


def test_16_bit_rgb(tmp_path):
    image = images.load_image(write_png16(tmp_path / "rgb16.png", RGB.astype(np.uint16) * 257))
    np.testing.assert_allclose(image, RGB, atol=1.0)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    image = images.load_image(tmp_path / "c.jpg")
    assert image.shape == (10, 12, 3)
    assert np.abs(image - RGB).mean() < 20  # JPEG is lossy; CMYK read as RGB would be far off


@pytest.mark.parametrize("content, match", [
    (b"this is not an image", "not an image this program can read"),
    (None, "truncated"),
])
def test_unreadable_files_give_one_clear_error(tmp_path, content, match):
    path = tmp_path / "x.png"
    if content is None:
        Image.fromarray(RGB).save(path)
        content = path.read_bytes()[:60]
    path.write_bytes(content)
    with pytest.raises(UserError, match=match) as error:
        images.load_image(path, "style image")
    assert str(path) in str(error.value) and "style image" in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        images.load_image(tmp_path / "nope.jpg")
    with pytest.raises(UserError, match="is a folder"):
        images.load_image(tmp_path)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    image = smooth_image(8, 9)
    path = images.save_image(tmp_path / "out.png", image)
    assert path == tmp_path / "out.png"
    assert sorted(os.listdir(tmp_path)) == ["out.png"]
    np.testing.assert_allclose(images.load_image(path), np.round(image), atol=0)


def test_saved_files_have_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = images.save_image(tmp_path / "out.png", np.zeros((4, 4, 3)))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_without_overwrite_keeps_the_existing_file(tmp_path):
    first = images.save_image(tmp_path / "out.png", np.zeros((4, 4, 3)))
    second = images.save_image(tmp_path / "out.png", np.full((4, 4, 3), 255.0), overwrite=False)
    assert second == tmp_path / "out.1.png"
    assert images.load_image(first).max() == 0 and images.load_image(second).min() == 255


def test_a_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = images.save_image(tmp_path / "out.png", np.zeros((4, 4, 3)))
    before = path.read_bytes()

    class HalfWritten:  # the temporary file gets half the image, then the disk is full
        def __init__(self, target, mode):
            self.file = open(target, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[:len(data) // 2])
            raise OSError("disk full")
    monkeypatch.setattr(images, "open", HalfWritten, raising=False)  # found before the builtin
    with pytest.raises(OSError):
        images.save_image(path, np.ones((4, 4, 3)))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.png"]


def test_check_writable(tmp_path):
    (tmp_path / "exists.png").write_bytes(b"x")
    with pytest.raises(UserError, match="--overwrite"):
        images.check_writable(tmp_path / "exists.png", overwrite=False)
    images.check_writable(tmp_path / "exists.png", overwrite=True)
    with pytest.raises(UserError, match="unsupported extension"):
        images.check_writable(tmp_path / "out.xyz", overwrite=False)
    with pytest.raises(UserError, match="does not exist"):
        images.check_writable(tmp_path / "no" / "out.png", overwrite=False)


def test_resize_helpers_keep_the_aspect_ratio():
    image = smooth_image(30, 60)
    assert images.cap_long_side(image, 20).shape == (10, 20, 3)
    assert images.cap_long_side(image, 100).shape == (30, 60, 3)  # never enlarged
    assert images.fit_long_side(image, 120).shape == (60, 120, 3)


def test_colour_transfer_keeps_result_luminance_and_content_colour():
    content, result = smooth_image(16, 16, seed=1), smooth_image(16, 16, seed=2)
    combined = images.with_colors_of(images.luminance(result), content)
    inside = (combined > 1) & (combined < 254)  # away from clipping
    mask = inside.all(axis=2)
    np.testing.assert_allclose(images.rgb_to_yiq(combined)[mask][:, 0],
                               images.rgb_to_yiq(result)[mask][:, 0], atol=0.05)
    np.testing.assert_allclose(images.rgb_to_yiq(combined)[mask][:, 1:],
                               images.rgb_to_yiq(content)[mask][:, 1:], atol=0.05)


def test_match_luminance_takes_the_content_mean_and_spread():
    style, content = smooth_image(20, 20, seed=3) * 0.3, smooth_image(16, 16, seed=4)
    matched = images.match_luminance(style, content)[..., 0]
    target = images.luminance(content)[..., 0]
    assert matched.mean() == pytest.approx(target.mean(), rel=1e-4)
    assert matched.std() == pytest.approx(target.std(), rel=1e-4)


# ---- sample photos and colour matching (moved from test_figures.py) ----------------------------

CONTENT = smooth_image(32, 40)


def test_sample_photos_come_from_the_scikit_image_wheel():
    photos, description = images.sample_photos(long_side=64)
    assert len(photos) == 6 and all(max(p.shape[:2]) == 64 and p.shape[2] == 3 for p in photos)
    assert "scikit-image" in description and "astronaut" in description


def test_histogram_matching_gives_the_style_the_content_colour_statistics():
    style, content = 0.4 * STYLE_A + 60, 0.5 * CONTENT + 60  # moderate ranges: nothing is clipped
    matched = images.match_colors(style, content)
    pixels, target = matched.reshape(-1, 3).astype(np.float64), content.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(pixels.mean(axis=0), target.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(np.cov(pixels.T), np.cov(target.T), rtol=1e-3, atol=0.5)
    assert np.abs(matched - style).mean() > 5  # it did change the colours


def test_a_write_that_runs_out_of_room_fails_once_with_no_finaliser_traceback(tmp_path):
    """A file-size limit makes every write past 2 kB fail (EFBIG) as a full disk would: the error
    reaches the caller as one OSError, and nothing else is printed (imageio's writer, left to its
    finaliser, printed a second traceback)."""
    import subprocess
    import sys
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))!r})
import numpy as np, images
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
noise = np.random.default_rng(0).uniform(0, 255, (64, 64, 3))
try:
    images.save_image({str(tmp_path / "big.png")!r}, noise)
except OSError as error:
    print("failed:", error.errno)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "failed: 27", done.stdout + done.stderr  # EFBIG
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())  # no partial file left behind
