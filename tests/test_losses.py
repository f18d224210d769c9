"""The loss definitions against values computed by hand in NumPy."""
import numpy as np
import pytest

import losses
from quiet_tf import tf

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


def test_gram_of_reduced_precision_maps_is_float32():
    """bfloat16 maps are multiplied as they are and float16 ones widened first: 300 at 1000
    positions sums to 9e7, past float16's 65504, which a float16 product would make infinite."""
    large = np.full((1, 20, 50, 2), 300.0, np.float32)
    for dtype in (tf.bfloat16, tf.float16):
        gram = losses.gram_matrix(tf.cast(large, dtype))
        assert gram.dtype == tf.float32
        np.testing.assert_allclose(gram.numpy()[0], gram_by_hand(large), rtol=1e-2)
    graph = tf.function(losses.gram_matrix).get_concrete_function(tf.TensorSpec((1, 3, 4, 5), tf.bfloat16)).graph
    products = [op for op in graph.get_operations() if op.type.startswith("BatchMatMul")]
    assert [op.inputs[0].dtype for op in products] == [tf.bfloat16]  # not widened first
    in_bfloat16 = tf.cast(F, tf.bfloat16)
    np.testing.assert_allclose(losses.gram_matrix(in_bfloat16).numpy()[0],
                               gram_by_hand(tf.cast(in_bfloat16, tf.float32).numpy()), rtol=1e-2, atol=1e-2)


def test_gram_gradient_is_the_products_for_any_upstream_gradient():
    """The Gram's one-product gradient, F (dG + dG^T), against the calculus by hand for a batch of
    two and a loss that weighs G's entries unsymmetrically (so dG is not symmetric), and in
    bfloat16, where it stays a bfloat16 map's gradient."""
    batch = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    weights = rng.standard_normal((5, 5)).astype(np.float32)
    for dtype, tolerance in ((tf.float32, 1e-5), (tf.bfloat16, 3e-2)):
        x = tf.cast(batch, dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(weights * losses.gram_matrix(x) ** 2)
        gradient = tape.gradient(loss, x)
        assert gradient.dtype == dtype
        flat = tf.cast(x, tf.float32).numpy().astype(np.float64).reshape(2, 12, 5)
        grams = np.einsum("bmi,bmj->bij", flat, flat)
        upstream = 2 * weights * grams  # d loss / d G
        by_hand = np.einsum("bmj,bij->bmi", flat, upstream + np.swapaxes(upstream, 1, 2))
        np.testing.assert_allclose(tf.cast(gradient, tf.float32).numpy().reshape(2, 12, 5), by_hand,
                                   rtol=tolerance, atol=tolerance * np.abs(by_hand).max())


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


# The unit systems of the other seed recipes, at two sizes each (the formulas must scale as stated).
SIZES = [(3, 4), (6, 8)]


def features_of(height, width, channels=5, seed=1):
    generator = np.random.default_rng(seed)
    return [generator.standard_normal((1, height, width, channels)).astype(np.float32) for _ in range(2)]


@pytest.mark.parametrize("height,width", SIZES)
def test_keras_units_match_numpy(height, width):
    """Keras: sum (F-P)^2; style sum (G-A)^2 / (4 * 3^2 * S^2) with S the INPUT image's rows*cols, not
    the layer's channels and positions (its quirk)."""
    f, p = features_of(height, width)
    units = losses.UNITS["keras"]
    assert float(units.content(f, p)) == pytest.approx(np.sum((f.astype(np.float64) - p) ** 2), rel=1e-5)
    input_positions = 37 * 53
    a = gram_by_hand(p)
    expected = np.sum((gram_by_hand(f) - a) ** 2) / (4 * 3 ** 2 * input_positions ** 2)
    got = units.style(f, a[np.newaxis].astype(np.float32), tf.constant(input_positions))
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("height,width", SIZES)
def test_keras_total_variation_is_the_1_25_power_of_squared_differences(height, width):
    image = rng.uniform(0, 255, (1, height, width, 3))
    expected = 0.0
    for i in range(height - 1):
        for j in range(width - 1):
            down = (image[0, i + 1, j] - image[0, i, j]) ** 2
            right = (image[0, i, j + 1] - image[0, i, j]) ** 2
            expected += np.sum((down + right) ** 1.25)
    got = losses.UNITS["keras"].tv(image.astype(np.float32))
    assert float(got) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("height,width", SIZES)
def test_tf_tutorial_units_match_numpy(height, width):
    """The tutorial: mean squared errors, Grams divided by the layer's positions, and
    tf.image.total_variation (sum of absolute differences) of the image in 0..1."""
    f, p = features_of(height, width)
    units = losses.UNITS["tf-tutorial"]
    assert float(units.content(f, p)) == pytest.approx(np.mean((f.astype(np.float64) - p) ** 2), rel=1e-5)
    m = height * width
    a = gram_by_hand(p)
    expected = np.mean((gram_by_hand(f) / m - a / m) ** 2)
    assert float(units.style(f, a[np.newaxis].astype(np.float32), None)) == pytest.approx(expected, rel=1e-4)
    image = rng.uniform(0, 255, (1, height, width, 3))
    tv = (np.sum(np.abs(np.diff(image, axis=1))) + np.sum(np.abs(np.diff(image, axis=2)))) / 255
    assert float(units.tv(image.astype(np.float32))) == pytest.approx(tv, rel=1e-5)


def test_printed_units_are_the_papers_formulas():
    units = losses.UNITS["printed"]
    a = losses.gram_matrix(P)
    assert float(units.content(F, P)) == pytest.approx(float(losses.content_loss(F, P)))
    assert float(units.style(F, a, tf.constant(999))) == pytest.approx(float(losses.style_loss(F, a)))
    assert units.tv is losses.total_variation_loss


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
    assert float(printed.style(f, target, None)) == pytest.approx(np.sum((g - a) ** 2) / (4 * n ** 2 * m ** 2),
                                                            rel=1e-4)
    assert float(authors.style(f, target, None)) == pytest.approx(np.mean((g / m - a / m) ** 2), rel=1e-4)
