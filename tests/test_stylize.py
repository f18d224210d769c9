"""The optimisation on a tiny network: both optimisers, progress, stopping, divergence, inits."""
import dataclasses

import numpy as np
import pytest

import images
import losses
import presets
import stylize
from conftest import smooth_image, stripes_image
from errors import UserError
from quiet_tf import tf

CONTENT = smooth_image(32, 40)
STYLE = stripes_image(36, 36)
SMALL = dict(content_layers={"relu4_2": 1.0},
             style_layers={"relu1_1": 0.2, "relu2_1": 0.2, "relu3_1": 0.2, "relu4_1": 0.2, "relu5_1": 0.2},
             content_weight=1.0, style_weight=1e3, iterations=12, seed=3)


def settings(**changes):
    return dataclasses.replace(stylize.Settings(**SMALL), **changes)


def run(network, monitor=None, styles=(STYLE,), **changes):
    seen = []

    def record(progress):
        seen.append(progress)
        return monitor(progress) if monitor else True
    result = stylize.stylize(network, CONTENT, list(styles), settings(**changes), record)
    return result, seen


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_optimisers_lower_the_loss_and_report_every_iteration(tiny_network, optimizer):
    result, seen = run(tiny_network, optimizer=optimizer, learning_rate=5.0)
    assert result.status == "done"
    assert [p.iteration for p in seen] == list(range(13))  # iteration 0 is the initial image
    assert seen[-1].total_loss < 0.5 * seen[0].total_loss
    assert all(b.seconds >= a.seconds for a, b in zip(seen, seen[1:]))
    for p in seen:
        assert p.total_loss == pytest.approx(1.0 * p.content_loss + 1e3 * p.style_loss, rel=1e-4)
    assert result.image.shape == CONTENT.shape
    assert result.image.min() >= 0 and result.image.max() <= 255


def test_reported_losses_belong_to_the_reported_image(tiny_network):
    """The losses at iteration k are those of the image the monitor can save at iteration k."""
    def check(progress):
        if progress.iteration in (0, 5):
            objective_terms = recompute(tiny_network, progress.image())
            assert objective_terms[0] == pytest.approx(progress.content_loss, rel=2e-2)
        return True
    run(tiny_network, check, init="content", iterations=5)


def recompute(network, image):
    from vgg import VGG
    s = settings()
    net = VGG(network, list(s.content_layers) + list(s.style_layers))
    objective = stylize.Objective(net, CONTENT, [STYLE], [1.0], s)
    return objective.terms(image[np.newaxis]).numpy()


def test_seed_makes_runs_repeatable(tiny_network):
    a, _ = run(tiny_network, iterations=3, seed=7)
    b, _ = run(tiny_network, iterations=3, seed=7)
    c, _ = run(tiny_network, iterations=3, seed=8)
    np.testing.assert_array_equal(a.image, b.image)
    assert np.abs(a.image - c.image).max() > 1


def test_monitor_can_stop_the_run_and_the_image_is_kept(tiny_network):
    result, seen = run(tiny_network, lambda p: p.iteration < 4, iterations=50)
    assert result.status == "interrupted" and result.iterations == 4
    assert len(seen) == 5
    np.testing.assert_allclose(result.image, seen[-1].image(), atol=1e-4)


def test_lbfgs_stop_keeps_the_best_image(tiny_network):
    result, seen = run(tiny_network, lambda p: p.iteration < 6, optimizer="lbfgs", iterations=50)
    assert result.status == "interrupted"
    best = min(seen, key=lambda p: p.total_loss)
    assert result.iterations == best.iteration


def test_non_finite_loss_keeps_the_last_finite_image(tiny_network):
    # Starting from the content, the content loss is 0 at first and overflows float32 once it grows.
    result, seen = run(tiny_network, init="content", content_weight=1e37, learning_rate=5.0, iterations=20)
    assert result.status == "diverged"
    assert np.all(np.isfinite(result.image))
    assert result.iterations == len(seen) - 1  # the last iteration the monitor saw as finite
    assert np.all(np.isfinite([p.total_loss for p in seen]))
    assert result.iterations < 20


def test_adam_follows_tf1_arithmetic():
    x = tf.Variable([1.0, -2.0])
    adam = stylize.Adam(x, learning_rate=0.5)
    m = v = np.zeros(2)
    expected = np.array([1.0, -2.0])
    for t, g in enumerate([np.array([0.3, -1.0]), np.array([0.1, 2.0])], start=1):
        adam.apply(tf.constant(g, tf.float32))
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        expected = expected - 0.5 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(x.numpy(), expected, atol=2e-5)


def test_blend_init_mixes_noise_and_content_around_the_mean(tiny_network):
    s = settings(init="blend", noise_ratio=0.75)
    start = stylize.initial_image(s, CONTENT, STYLE, tiny_network.mean_pixel)
    mean = tiny_network.mean_pixel
    noise = (start - mean - 0.25 * (CONTENT - mean)) / 0.75
    assert noise.min() >= -20.001 and noise.max() <= 20.001 and noise.std() > 10
    white = stylize.initial_image(settings(init="noise"), CONTENT, STYLE, mean)
    assert abs(np.corrcoef(white.ravel(), CONTENT.ravel())[0, 1]) < 0.1
    np.testing.assert_array_equal(stylize.initial_image(settings(init="content"), CONTENT, STYLE, mean),
                                  CONTENT)
    assert stylize.initial_image(settings(init="style"), CONTENT, STYLE, mean).shape == CONTENT.shape


def test_init_image_is_used(tiny_network):
    start = smooth_image(20, 20, seed=9)
    s = settings(init="image")
    got = stylize.initial_image(s, CONTENT, STYLE, tiny_network.mean_pixel, start)
    np.testing.assert_allclose(got, images.resize(start, *CONTENT.shape[:2]))


def test_preserve_colors_keeps_the_content_colours(tiny_network):
    result, _ = run(tiny_network, color_control="luminance", iterations=5, init="content")
    yiq_out, yiq_content = images.rgb_to_yiq(result.image), images.rgb_to_yiq(CONTENT)
    unclipped = ((result.image > 2) & (result.image < 253)).all(axis=2)
    np.testing.assert_allclose(yiq_out[unclipped][:, 1:], yiq_content[unclipped][:, 1:], atol=0.5)


def test_two_styles_with_blend_weights(tiny_network):
    other = smooth_image(30, 30, seed=5)
    result, seen = run(tiny_network, styles=(STYLE, other), style_blend_weights=[3, 1], iterations=2)
    assert result.status == "done"
    with pytest.raises(UserError, match="2 style blend weights given for 1 style image"):
        run(tiny_network, style_blend_weights=[1, 1])


def test_style_target_is_rescaled_to_the_output_size(tiny_network):
    """A style image that is the content at twice the size has nearly the content's own Grams."""
    s = settings(style_scale=2.0)
    from vgg import VGG
    net = VGG(tiny_network, list(s.content_layers) + list(s.style_layers))
    big = images.resize(CONTENT, 64, 80)
    same = stylize.Objective(net, CONTENT, [CONTENT], [1.0], s).terms(CONTENT[np.newaxis]).numpy()[1]
    scaled = stylize.Objective(net, CONTENT, [big], [1.0], s).terms(CONTENT[np.newaxis]).numpy()[1]
    other = stylize.Objective(net, CONTENT, [STYLE], [1.0], s).terms(CONTENT[np.newaxis]).numpy()[1]
    assert same == pytest.approx(0.0, abs=1e-6)
    assert scaled < 0.2 * other


@pytest.mark.parametrize("change, match", [
    (dict(iterations=0), "iterations must be a positive"),
    (dict(optimizer="sgd"), "optimizer must be"),
    (dict(noise_ratio=1.5), "noise ratio"),
    (dict(style_scale=0), "style scale"),
])
def test_bad_settings(tiny_network, change, match):
    with pytest.raises(UserError, match=match):
        run(tiny_network, **change)


def test_image_too_small_for_the_deepest_layer(tiny_network):
    with pytest.raises(UserError, match="needs at least 16 px") as error:
        stylize.stylize(tiny_network, smooth_image(10, 40), [STYLE], settings())
    assert "content image is 40x10" in str(error.value)
    with pytest.raises(UserError, match="style image"):
        stylize.stylize(tiny_network, CONTENT, [STYLE], settings(style_scale=0.2))


# ---- loss units and balance calibration (issue 12) --------------------------------------------



def _objective_and_start(network, size, units, balance="off"):
    settings = presets.settings_for_preset("gatys2016", loss_units=units, balance=balance,
                                            normalize_network=False, seed=0)
    content = smooth_image(*size)
    style = stripes_image(*size)
    net = stylize.VGG(network, list(settings.content_layers) + list(settings.style_layers))
    objective = stylize.Objective(net, content, [style], np.array([1.0]), settings)
    start = np.clip(stylize.initial_image(settings, content, style, network.mean_pixel), 0, 255)
    return settings, objective, start, content, style


def test_calibration_factor_is_the_reference_times_the_gradient_norm_ratio(tiny_network, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(stylize.vgg, "_cache_folder", lambda path: tmp_path)
    settings, objective, start, content, style = _objective_and_start(tiny_network, (40, 48), "authors",
                                                                      "auto")
    content_norm, style_norm = objective.gradient_norms(start)
    factor = stylize.resolve_balance(settings, lambda: objective, tiny_network, start, content, [style], None)
    assert factor == pytest.approx(losses.UNITS["authors"].reference_balance * content_norm / style_norm,
                                   rel=1e-4)
    # Measured once: the second run reads it from the cache beside the network.
    assert (tmp_path / "balance.json").exists()
    boom = lambda: (_ for _ in ()).throw(AssertionError("measured again"))
    assert stylize.resolve_balance(settings, boom, tiny_network, start, content, [style], None) == factor
    assert stylize.resolve_balance(dataclasses.replace(settings, balance=2.5), boom, tiny_network,
                                   start, content, [style], None) == 2.5


def test_authors_units_keep_the_gradient_balance_across_sizes_and_printed_do_not(tiny_network):
    def ratio(units, size):
        _, objective, start, _, _ = _objective_and_start(tiny_network, size, units)
        content_norm, style_norm = objective.gradient_norms(start)
        return content_norm / style_norm
    authors = ratio("authors", (64, 80)) / ratio("authors", (128, 160))
    printed = ratio("printed", (64, 80)) / ratio("printed", (128, 160))
    assert 1 / 1.5 < authors < 1.5
    assert not 1 / 1.5 < printed < 1.5


def test_a_balanced_run_reports_its_factor_and_weights_beta_by_it(tiny_network, tmp_path, monkeypatch):
    monkeypatch.setattr(stylize.vgg, "_cache_folder", lambda path: tmp_path)
    settings = presets.settings_for_preset("gatys2016", balance="auto", normalize_network=False,
                                            iterations=2, seed=0)
    seen = []
    result = stylize.stylize(tiny_network, smooth_image(40, 48), [stripes_image(40, 48)], settings,
                             lambda p: seen.append(p) or True)
    assert result.balance != 1.0 and np.isfinite(result.balance)
    p = seen[0]
    assert p.total_loss == pytest.approx(settings.content_weight * p.content_loss
                                         + result.balance * settings.style_weight * p.style_loss, rel=1e-4)


@pytest.mark.parametrize("field, value", [("loss_units", "metric"), ("balance", -1.0),
                                          ("balance", float("nan")), ("balance", "sometimes")])
def test_bad_units_or_balance_is_a_user_error(tiny_network, field, value):
    settings = dataclasses.replace(stylize.Settings(), **{field: value})
    with pytest.raises(UserError):
        stylize.stylize(tiny_network, smooth_image(40, 48), [smooth_image(40, 48)], settings)
