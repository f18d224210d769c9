"""Render examples/swirls.jpg, the style image shipped with the project (made here, CC0).

Brush strokes are white noise smeared along a swirling flow (line integral convolution around a few
vortices), coloured with a night-sky palette: a stand-in for a painting that anyone may redistribute.
    python examples/make_swirls.py
"""
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy import ndimage

HEIGHT, WIDTH, STEPS = 384, 512, 24


def flow(y, x, vortices):
    """Unit vectors of the sum of vortices (each: centre, strength) plus a gentle drift."""
    vy, vx = np.full_like(y, 0.2), np.full_like(x, 1.0)
    for (cy, cx), strength in vortices:
        dy, dx = y - cy, x - cx
        falloff = strength / (dy * dy + dx * dx + 400.0) * 2000.0
        vy, vx = vy + dx * falloff / 40.0, vx - dy * falloff / 40.0
    norm = np.hypot(vy, vx) + 1e-6
    return vy / norm, vx / norm


def main():
    rng = np.random.default_rng(1889)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    vortices = [((120, 150), 1.0), ((90, 360), -0.8), ((260, 260), 0.7), ((300, 80), -0.6)]
    noise = ndimage.zoom(rng.random((HEIGHT // 2, WIDTH // 2)), 2, order=0)
    strokes = np.zeros_like(noise)
    for direction in (1.0, -1.0):  # integrate the noise along the streamline both ways
        py, px = y.copy(), x.copy()
        for _ in range(STEPS):
            vy, vx = flow(py, px, vortices)
            py, px = py + direction * vy, px + direction * vx
            strokes += ndimage.map_coordinates(noise, [py, px], order=1, mode="reflect")
    strokes = (strokes - strokes.mean()) / strokes.std()
    # Colour: deep blue sky, lighter swirls, a yellow moon and a dark hill.
    swirl = np.clip(0.5 + 0.25 * strokes + 0.3 * np.sin(np.hypot(y - 120, x - 150) / 18.0), 0, 1)
    sky = np.stack([20 + 90 * swirl, 50 + 110 * swirl, 110 + 120 * swirl], axis=-1)
    moon = np.exp(-((y - 70) ** 2 + (x - 440) ** 2) / 900.0)[..., None]
    sky = sky * (1 - moon) + np.array([250, 215, 90]) * moon * (0.85 + 0.15 * strokes[..., None])
    hill = (y > 300 + 30 * np.sin(x / 70.0))[..., None]
    ground = np.stack([30 + 30 * swirl, 40 + 40 * swirl, 25 + 20 * swirl], axis=-1)
    image = np.where(hill, ground, sky)
    iio.imwrite(Path(__file__).with_name("swirls.jpg"), np.clip(image, 0, 255).astype(np.uint8),
                quality=92)


if __name__ == "__main__":
    main()
