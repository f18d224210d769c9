"""Issue 5: the paper's normalised network, figures.py and the perceptual controls."""
import numpy as np
import pytest

import images
import vgg
from conftest import smooth_image, stripes_image
from quiet_tf import tf

PHOTOS = [smooth_image(32, 40, seed=s) for s in range(3)] + [stripes_image(36, 36)]
RELUS = ["relu1_1", "relu2_2", "relu3_4", "relu5_4"]


def channel_means(network, photos, names):
    net = vgg.VGG(network, names)
    sums = {n: 0.0 for n in names}
    counts = {n: 0 for n in names}
    for photo in photos:
        for name, f in net(photo[np.newaxis]).items():
            sums[name] = sums[name] + f.numpy().sum(axis=(0, 1, 2))
            counts[name] += f.shape[1] * f.shape[2]
    return {n: sums[n] / counts[n] for n in names}


def test_normalised_network_has_mean_activation_one_per_channel(tiny_network):
    normalised = vgg.normalize(tiny_network, PHOTOS, "test photos")
    means = channel_means(normalised, PHOTOS, RELUS)
    original = channel_means(tiny_network, PHOTOS, RELUS)
    for name in RELUS:
        alive = original[name] > 0
        np.testing.assert_allclose(means[name][alive], 1.0, rtol=1e-3)
        np.testing.assert_array_equal(means[name][~alive], 0.0)  # dead channels stay dead
    assert "test photos" in normalised.normalization


def test_normalised_network_computes_the_same_function_up_to_a_channel_scale(tiny_network):
    normalised = vgg.normalize(tiny_network, PHOTOS, "test photos")
    other = smooth_image(40, 48, seed=11)[np.newaxis]  # not in the normalising set
    before = vgg.VGG(tiny_network, RELUS)(other)
    after = vgg.VGG(normalised, RELUS)(other)
    means = channel_means(tiny_network, PHOTOS, RELUS)
    for name in RELUS:
        scale = np.where(means[name] > 0, means[name], 1.0)
        np.testing.assert_allclose(after[name].numpy() * scale, before[name].numpy(),
                                   rtol=1e-3, atol=1e-3 * float(tf.reduce_max(before[name])))


def test_normalisation_is_cached_by_checksum_photos_and_pooling(tiny_network, monkeypatch):
    first = vgg.normalize(tiny_network, PHOTOS, "cache test", pooling="max")

    def recompute(*args):
        raise AssertionError("recomputed although cached")
    monkeypatch.setattr(vgg, "_channel_means", recompute)
    again = vgg.normalize(tiny_network, PHOTOS, "cache test", pooling="max")
    for a, b in zip(first.layers, again.layers):
        if a.kernel is not None:
            np.testing.assert_array_equal(a.kernel, b.kernel)
    with pytest.raises(AssertionError, match="recomputed"):
        vgg.normalize(tiny_network, PHOTOS, "another photo set", pooling="max")


def test_sample_photos_come_from_the_scikit_image_wheel():
    photos, description = images.sample_photos(long_side=64)
    assert len(photos) == 8 and all(max(p.shape[:2]) == 64 and p.shape[2] == 3 for p in photos)
    assert "scikit-image" in description and "astronaut" in description


# ---- perceptual controls (Gatys et al. 2017) ---------------------------------------------------

import dataclasses  # noqa: E402

import stylize  # noqa: E402
from errors import UserError  # noqa: E402

CONTENT = smooth_image(32, 40)
STYLE_A, STYLE_B = stripes_image(36, 36), smooth_image(36, 36, seed=7)
LAYERS = {"relu1_1": 0.5, "relu3_1": 0.5}


def objective(network, styles, masks=None, **changes):
    settings = dataclasses.replace(stylize.Settings(content_layers={"relu4_2": 1.0}, style_layers=LAYERS),
                                   **changes)
    net = vgg.VGG(network, ["relu4_2", *LAYERS])
    blend = [1.0 / len(styles)] * len(styles)
    return stylize.Objective(net, CONTENT, styles, blend, settings, masks)


def style_term(obj, image=CONTENT):
    return float(obj.terms(image[np.newaxis])[1])


def test_histogram_matching_gives_the_style_the_content_colour_statistics():
    style, content = 0.4 * STYLE_A + 60, 0.5 * CONTENT + 60  # moderate ranges: nothing is clipped
    matched = images.match_colors(style, content)
    pixels, target = matched.reshape(-1, 3).astype(np.float64), content.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(pixels.mean(axis=0), target.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(np.cov(pixels.T), np.cov(target.T), rtol=1e-3, atol=0.5)
    assert np.abs(matched - style).mean() > 5  # it did change the colours


def test_a_white_mask_is_the_unguided_loss_and_a_black_mask_removes_the_style(tiny_network):
    image = smooth_image(32, 40, seed=3)
    plain = style_term(objective(tiny_network, [STYLE_A]), image)
    white = np.ones(CONTENT.shape[:2], np.float32)
    assert style_term(objective(tiny_network, [STYLE_A], [white]), image) == pytest.approx(plain, rel=1e-4)
    # Two styles, the second masked out everywhere: only the first one's half-weighted loss remains.
    both = style_term(objective(tiny_network, [STYLE_A, STYLE_B], [white, 0 * white]), image)
    assert both == pytest.approx(0.5 * plain, rel=1e-4)


def test_a_mask_confines_the_style_gradient_to_its_region(tiny_network):
    left = np.zeros(CONTENT.shape[:2], np.float32)
    left[:, :12] = 1.0
    obj = objective(tiny_network, [STYLE_A], [left], style_layers={"relu1_1": 1.0})
    x = tf.Variable(smooth_image(32, 40, seed=3)[np.newaxis])
    with tf.GradientTape() as tape:
        loss = obj.terms(x)[1]
    gradient = np.abs(tape.gradient(loss, x).numpy()[0]).sum(axis=2)
    assert gradient[:, :11].mean() > 100 * (gradient[:, 16:].mean() + 1e-12)


def test_style_layer_sets_take_fine_and_coarse_scales_from_different_styles(tiny_network):
    image = smooth_image(32, 40, seed=3)
    mixed = style_term(objective(tiny_network, [STYLE_A, STYLE_B],
                                 style_layer_sets=[["relu1_1"], ["relu3_1"]]), image)
    fine = style_term(objective(tiny_network, [STYLE_A], style_layers={"relu1_1": 0.5}), image)
    coarse = style_term(objective(tiny_network, [STYLE_B], style_layers={"relu3_1": 0.5}), image)
    assert mixed == pytest.approx(fine + coarse, rel=1e-4)


@pytest.mark.parametrize("changes, match", [
    (dict(style_layer_sets=[["relu1_1"]]), "1 style layer sets given for 2 style images"),
    (dict(style_layer_sets=[["relu1_1"], ["relu9_9"]]), "not one of the style layers"),
    (dict(style_layer_sets=[["relu1_1"], ["relu1_1"]]), "relu3_1 is in no style layer set"),
    (dict(color_control="sepia"), "colour control must be one of"),
])
def test_bad_control_settings(tiny_network, changes, match):
    settings = dataclasses.replace(stylize.Settings(content_layers={"relu4_2": 1.0}, style_layers=LAYERS,
                                                    iterations=1), **changes)
    with pytest.raises(UserError, match=match):
        stylize.stylize(tiny_network, CONTENT, [STYLE_A, STYLE_B], settings)


def test_mask_count_must_match_the_styles(tiny_network):
    with pytest.raises(UserError, match="1 style masks given for 2 style images"):
        stylize.stylize(tiny_network, CONTENT, [STYLE_A, STYLE_B], stylize.Settings(iterations=1),
                        masks=[np.ones((4, 4))])


def test_cli_runs_every_control(tiny_mat, tmp_path):
    import neural_style
    content = images.save_image(tmp_path / "c.png", CONTENT)
    style_a = images.save_image(tmp_path / "a.png", STYLE_A)
    style_b = images.save_image(tmp_path / "b.png", STYLE_B)
    mask = np.zeros((32, 40, 3))
    mask[:16] = 255
    top = images.save_image(tmp_path / "top.png", mask)
    bottom = images.save_image(tmp_path / "bottom.png", 255 - mask)
    common = ["--content", str(content), "--network", str(tiny_mat), "--iterations", "2",
              "--content-layers", "relu4_2", "--style-layers", "relu1_1,relu3_1"]
    assert neural_style.main(common + ["--style", str(style_a), str(style_b), "--style-mask", str(top),
                                       str(bottom), "--output", str(tmp_path / "mask.png")]) == 0
    assert neural_style.main(common + ["--style", str(style_a), str(style_b), "--style-layer-sets",
                                       "relu1_1", "relu3_1", "--output", str(tmp_path / "scale.png")]) == 0
    assert neural_style.main(common + ["--style", str(style_a), "--color-control", "histogram",
                                       "--output", str(tmp_path / "hist.png")]) == 0
    assert neural_style.main(common + ["--style", str(style_a), "--preserve-colors", "--color-control",
                                       "histogram", "--output", str(tmp_path / "x.png")]) == 1
    assert neural_style.main(common + ["--style", str(style_a), "--normalize-network",
                                       "--output", str(tmp_path / "norm.png")]) == 0
    assert images.load_image(tmp_path / "mask.png").shape == (32, 40, 3)
