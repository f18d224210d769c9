"""The loss definitions against values computed by hand in NumPy."""
import numpy as np
import pytest

import losses

rng = np.random.default_rng(0)
F = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)  # 1 image, 3x4 positions, 5 channels
P = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)


def gram_by_hand(features):
    flat = features[0].reshape(-1, features.shape[3]).astype(np.float64)  # M x N
    return flat.T @ flat


def test_gram_is_unnormalised_f_transpose_f():
    np.testing.assert_allclose(losses.gram_matrix(F).numpy()[0], gram_by_hand(F), rtol=1e-5)
    assert losses.gram_matrix(F).shape == (1, 5, 5)


def test_normalised_gram_divides_by_c_h_w():
    np.testing.assert_allclose(losses.gram_matrix(F, normalize=True).numpy()[0],
                               gram_by_hand(F) / (3 * 4 * 5), rtol=1e-5)


def test_content_loss_is_half_the_sum_of_squares():
    expected = 0.5 * np.sum((F.astype(np.float64) - P) ** 2)
    assert float(losses.content_loss(F, P)) == pytest.approx(expected, rel=1e-5)


def test_style_loss_is_gatys_e_l():
    n, m = 5, 12
    a = gram_by_hand(P)[np.newaxis]
    expected = np.sum((gram_by_hand(F) - a[0]) ** 2) / (4 * n ** 2 * m ** 2)
    assert float(losses.style_loss(F, a.astype(np.float32))) == pytest.approx(expected, rel=1e-5)


def test_style_loss_is_zero_for_the_target_itself():
    assert float(losses.style_loss(F, losses.gram_matrix(F))) == pytest.approx(0.0, abs=1e-6)


def test_total_variation_sums_squared_neighbour_differences():
    image = rng.uniform(0, 255, (1, 4, 6, 3))
    expected = np.sum(np.diff(image, axis=1) ** 2) + np.sum(np.diff(image, axis=2) ** 2)
    assert float(losses.total_variation_loss(image.astype(np.float32))) == pytest.approx(expected, rel=1e-5)


def test_johnson_losses_normalise_by_c_h_w_and_average_the_batch():
    batch = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    target = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    size = 3 * 4 * 5
    content = np.mean([np.sum((b - target[0]) ** 2) / size for b in batch.astype(np.float64)])
    assert float(losses.feature_reconstruction_loss(batch, target)) == pytest.approx(content, rel=1e-5)
    a = gram_by_hand(target) / size
    style = np.mean([np.sum((gram_by_hand(b[np.newaxis]) / size - a) ** 2) for b in batch])
    got = losses.style_reconstruction_loss(batch, a[np.newaxis].astype(np.float32))
    assert float(got) == pytest.approx(style, rel=1e-4)


# ---- the unit systems (issue 12) ---------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(3, 4), (6, 8)])
def test_unit_systems_against_numpy(height, width):
    f = rng.standard_normal((1, height, width, 5)).astype(np.float32)
    p = rng.standard_normal((1, height, width, 5)).astype(np.float32)
    n, m = 5, height * width
    g, a = gram_by_hand(f), gram_by_hand(p)
    diff = f.astype(np.float64) - p
    printed, authors = losses.UNITS["printed"], losses.UNITS["authors"]
    assert float(printed.content(f, p)) == pytest.approx(0.5 * np.sum(diff ** 2), rel=1e-5)
    assert float(authors.content(f, p)) == pytest.approx(np.mean(diff ** 2), rel=1e-5)
    target = a[np.newaxis].astype(np.float32)
    assert float(printed.style(f, target)) == pytest.approx(np.sum((g - a) ** 2) / (4 * n ** 2 * m ** 2),
                                                            rel=1e-4)
    assert float(authors.style(f, target)) == pytest.approx(np.mean((g / m - a / m) ** 2), rel=1e-4)
