"""The optimisation on a tiny network: both optimisers, progress, stopping, divergence, inits; and
its speed levers: L-BFGS's hand-over to float32, coarse-to-fine scales, recomputation, the fast preset."""
import dataclasses
import json
import os

import numpy as np
import pytest

import images
import losses
import presets
import stylize
import vgg
from conftest import STYLE_A, STYLE_B, smooth_image, stripes_image
from errors import UserError
from presets import settings_for_preset
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


@pytest.mark.parametrize("optimizer,impl", [("adam", "tf"), ("lbfgs", "tf"), ("lbfgs", "scipy")])
def test_optimisers_lower_the_loss_and_report_every_iteration(tiny_network, optimizer, impl):
    result, seen = run(tiny_network, optimizer=optimizer, learning_rate=5.0, lbfgs_impl=impl)
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


@pytest.mark.parametrize("impl", stylize.LBFGS_IMPLS)
def test_lbfgs_stop_keeps_the_best_image(tiny_network, impl):
    result, seen = run(tiny_network, lambda p: p.iteration < 6, optimizer="lbfgs", iterations=50,
                       lbfgs_impl=impl)
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


def test_unknown_lbfgs_implementation_is_a_user_error(tiny_network):
    with pytest.raises(UserError, match="L-BFGS implementation"):
        run(tiny_network, optimizer="lbfgs", lbfgs_impl="cuda")


@pytest.mark.parametrize("changes", [dict(lbfgs_round=4), dict(clip_image=False), dict(writeup_exact=True)])
def test_what_only_scipys_lbfgs_does_asks_for_it(tiny_network, changes):
    with pytest.raises(UserError, match="use --lbfgs-impl scipy"):
        run(tiny_network, optimizer="lbfgs", **changes)
    assert settings_for_preset("keras").lbfgs_impl == "scipy"  # unbounded, in rounds


# ---- speed levers ------------------------------------------------------------------------------

def small_settings(**changes):
    base = dict(content_layers={"relu4_2": 1.0}, style_layers={"relu1_1": 0.5, "relu3_1": 0.5},
                content_weight=1.0, style_weight=1e3, iterations=3, seed=0, optimizer="lbfgs")
    return dataclasses.replace(stylize.Settings(**base), **changes)


class Quadratic:
    """An ill-conditioned quadratic over an 8x8 image, with the objective's interface. With `step`,
    its value is rounded to multiples of it (the gradient stays exact): the rounding noise of reduced
    precision, which stops L-BFGS's line search once the decrease per step is below it."""

    def __init__(self, step=None):
        self.step, self.calls = step, 0
        self.scale = tf.constant(np.logspace(0, 3, 8 * 8 * 3).reshape(1, 8, 8, 3), tf.float32)

    def terms(self, x):
        self.calls += 1  # counted while tracing: how often a compiled function was built for it
        value = tf.reduce_sum(self.scale * tf.square(x - 100.0))
        if self.step:
            value += tf.stop_gradient(tf.round(value / self.step) * self.step - value)
        return tf.stack([value, 0.0, 0.0])

    def total(self, terms):
        return terms[0]

    def exact_loss(self, image):
        return float(np.sum(self.scale.numpy()[0] * np.square(image - 100.0)))


START = np.random.default_rng(0).uniform(0, 255, (8, 8, 3)).astype(np.float32)


BOTH_LBFGS = pytest.mark.parametrize("run_lbfgs", [stylize._lbfgs_tf, stylize._lbfgs], ids=["tf", "scipy"])


@BOTH_LBFGS
def test_lbfgs_goes_on_in_float32_when_rounding_noise_stops_it(run_lbfgs):
    keep_going = lambda *args: True
    rounded_only, _, _ = run_lbfgs(Quadratic(step=1e3), START, 300, keep_going)
    exact = Quadratic()
    handed_over, _, status = run_lbfgs(Quadratic(step=1e3), START, 300, keep_going, exact=lambda: exact)
    assert status == "done" and exact.calls > 0
    # The rounded loss cannot see below about 500; the exact one takes the image far below.
    assert exact.exact_loss(rounded_only) > 100.0
    assert exact.exact_loss(handed_over) < 1e-2 * exact.exact_loss(rounded_only)


class Overflowing(Quadratic):
    """The quadratic, but infinite once the image comes near its minimum: float16's small range."""

    def terms(self, x):
        terms = super().terms(x)
        return tf.where(terms[0] < 1e4, np.inf, terms)


@BOTH_LBFGS
def test_lbfgs_goes_on_in_float32_when_reduced_precision_overflows(run_lbfgs):
    seen = []
    exact = Quadratic()
    image, _, status = run_lbfgs(Overflowing(), START, 200, lambda i, *a: seen.append(i) or True,
                                      exact=lambda: exact)
    assert status == "done" and exact.exact_loss(image) < 1.0
    assert seen == list(range(len(seen)))  # the overflowing evaluation is no iteration
    without, _, status = run_lbfgs(Overflowing(), START, 200, lambda *a: True)
    assert status == "diverged" and exact.exact_loss(without) >= 1e4


# ---- float16: dynamic loss scaling ----------------------------------------------------------------

def test_loss_scaling_halves_on_overflow_skips_and_grows_after_finite_steps():
    scaling = stylize.LossScale(tf.float16, initial=2.0 ** 15, growth_interval=3)
    x = tf.Variable(1.0)

    def gradient():  # d/dx of 1000 x, with the backward pass in float16 (overflows past 65504)
        with tf.GradientTape() as tape:
            scaled = tf.cast(tf.cast(x, tf.float16) * 1000.0, tf.float32) * scaling.scale
        return scaling.gradient(tape, scaled, x)
    scales, results = [], []
    for _ in range(16):
        scales.append(float(scaling.scale))
        value, finite = gradient()
        results.append((float(value), bool(finite)))
    skipped = next(i for i, (_, finite) in enumerate(results) if finite)  # overflowed until then
    assert skipped > 0
    for before, after, (value, finite) in zip(scales, scales[1:], results):
        assert finite or after == before / 2
        assert not finite or value == 1000.0  # unscaled in float32: the true gradient
    first_finite = scales[skipped]
    assert first_finite * 1000 <= 65504 < 2 * first_finite * 1000
    assert scales[skipped:skipped + 3] == [first_finite] * 3 and all(f for _, f in results[skipped:skipped + 3])
    # three finite steps in a row double the scale: here it overflows again and halves
    assert scales[skipped + 3] == 2 * first_finite and not results[skipped + 3][1]


def test_loss_scaling_is_only_for_float16():
    for dtype in (tf.float32, tf.bfloat16):
        scaling = stylize.LossScale(dtype)
        x = tf.Variable(1.0)
        with tf.GradientTape() as tape:
            scaled = np.inf * x * scaling.scale
        value, finite = scaling.gradient(tape, scaled, x)
        assert float(scaling.scale) == 1.0 and bool(finite)


def gradient_at_start(network, changes, dtype, scaling=False):
    """The objective's gradient at the run's first image, the network in `dtype`, the loss scaled by
    stylize.LossScale's first scale or not."""
    run_settings = settings(**changes)
    net = vgg.VGG(network, list(run_settings.content_layers) + list(run_settings.style_layers), dtype=dtype)
    objective = stylize.Objective(net, CONTENT, [STYLE], [1.0], run_settings)
    loss_scale = stylize.LossScale(net.dtype if scaling else tf.float32)
    x = tf.constant(stylize.initial_image(run_settings, CONTENT, STYLE, network.mean_pixel)[np.newaxis])
    with tf.GradientTape() as tape:
        tape.watch(x)
        scaled = objective.total(objective.terms(x)) * loss_scale.scale
    return loss_scale.gradient(tape, scaled, x)[0].numpy()


def test_adam_in_float16_does_not_diverge_where_its_gradient_overflows(tiny_network):
    changes = dict(style_weight=1e6, precision="float16", learning_rate=5.0, iterations=40)
    assert not np.isfinite(gradient_at_start(tiny_network, changes, "float16")).all()  # unscaled: inf
    result, seen = run(tiny_network, **changes)
    assert result.status == "done" and np.isfinite(result.image).all()
    losses = [p.total_loss for p in seen]
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    # the steps skipped while the scale came down left the image as it was
    skipped = next(i for i, loss in enumerate(losses) if loss != losses[0])
    assert 0 < skipped < 30


def test_loss_scaling_keeps_float16_gradients_that_would_underflow(tiny_network):
    changes = dict(content_weight=1e-9, style_weight=1e-8)  # gradients of about 1e-7 a pixel
    exact = gradient_at_start(tiny_network, changes, "float32")
    unscaled = gradient_at_start(tiny_network, changes, "float16")
    scaled = gradient_at_start(tiny_network, changes, "float16", scaling=True)
    assert (unscaled == 0).mean() > 0.5 > (exact == 0).mean()  # most of it lost below float16's range
    assert np.abs(scaled - exact).max() < 0.2 * np.abs(exact).max()  # float16's rounding, no more


@BOTH_LBFGS
def test_lbfgs_stops_once_a_fresh_start_makes_no_progress(run_lbfgs):
    evaluations = []
    image, _, status = run_lbfgs(Quadratic(), START, 5000, lambda *a: evaluations.append(a) or True)
    assert status == "done" and len(evaluations) < 5000
    assert Quadratic().exact_loss(image) < 1e-3


def test_coarse_to_fine_numbers_iterations_across_scales(tiny_network):
    seen = []

    def monitor(p):
        seen.append((p.iteration, p.total_iterations, p.image().shape[:2]))
        return True
    content = smooth_image(64, 80)
    result = stylize.stylize(tiny_network, content, [stripes_image(40, 40)],
                             small_settings(scales=((0.5, 4), (1.0, 3))), monitor)
    assert [i for i, _, _ in seen] == list(range(8))  # 0..4 at half size, 5..7 at full size
    assert {t for _, t, _ in seen} == {7}
    assert [shape for i, _, shape in seen if i <= 4] == [(32, 40)] * 5
    assert [shape for i, _, shape in seen if i > 4] == [(64, 80)] * 3
    assert result.image.shape == content.shape and result.status == "done"


def test_coarse_scale_continues_from_the_upsampled_image(tiny_network):
    """The first full-size iteration starts from the half-size result, not from a new init."""
    seen = []
    content = smooth_image(64, 80)
    stylize.stylize(tiny_network, content, [stripes_image(40, 40)],
                    small_settings(scales=((0.5, 6), (1.0, 1)), init="noise"),
                    lambda p: seen.append(p) or True)
    white_noise_loss = seen[0].total_loss  # iteration 0 at half size, from noise
    assert seen[-1].total_loss < 0.8 * white_noise_loss


def test_upsampling_carries_the_coarse_change_and_keeps_the_starts_finer_detail():
    rng = np.random.default_rng(0)
    start = rng.uniform(50, 200, (32, 40, 3)).astype(np.float32)  # detail at every pixel
    coarse = images.resize(start, 16, 20)
    # The coarse scale changed nothing: the fine start comes back as it was, detail and all.
    np.testing.assert_allclose(stylize.upsample_with_detail(coarse, start), start, atol=1e-3)
    # What it changed (here a shift of every colour) is carried up over that detail.
    np.testing.assert_allclose(stylize.upsample_with_detail(coarse + 10.0, start), start + 10.0, atol=1e-3)


def test_a_coarse_scale_too_small_for_the_network_is_skipped(tiny_network):
    seen = []
    stylize.stylize(tiny_network, smooth_image(32, 40), [stripes_image(40, 40)],
                    small_settings(content_layers={"relu5_1": 1.0}, scales=((0.25, 5), (1.0, 2))),
                    lambda p: seen.append(p.image().shape[:2]) or True)
    assert seen == [(32, 40)] * 3


@pytest.mark.parametrize("scales", [((0.5, None),), ((1.0, None), (0.5, None)), ((0.0, 3), (1.0, 3))])
def test_scales_must_rise_to_the_output_size(tiny_network, scales):
    with pytest.raises(UserError, match="scales must rise to 1"):
        stylize.stylize(tiny_network, smooth_image(32, 40), [stripes_image(40, 40)],
                        small_settings(scales=scales))


def test_auto_recompute_when_activations_would_not_fit(tiny_network, monkeypatch):
    built = []
    original = stylize.VGG

    def recording_vgg(*args, **kwargs):
        built.append(kwargs["recompute"])
        return original(*args, **kwargs)
    monkeypatch.setattr(stylize, "VGG", recording_vgg)
    run = lambda: stylize.stylize(tiny_network, smooth_image(32, 40), [stripes_image(40, 40)],
                                  small_settings(iterations=2, recompute="auto"))
    plenty = run().image
    monkeypatch.setattr(stylize, "_available_memory", lambda: 1000)
    scarce = run().image
    assert built == [False, True]
    np.testing.assert_allclose(scarce, plenty, atol=0.5)


def test_progress_reports_the_share_of_work_an_iteration_weighing_as_its_scales_pixels(tiny_network):
    shares = []
    stylize.stylize(tiny_network, smooth_image(32, 40), [stripes_image(40, 40)],
                    small_settings(scales=((0.5, 4), (1.0, 2))), lambda p: shares.append(p.done) or True)
    coarse, full = 16 * 20 * 4, 32 * 40 * 2
    assert shares[0] == 0.0 and shares[-1] == pytest.approx(1.0)
    assert shares[4] == pytest.approx(coarse / (coarse + full))  # the end of the half-size scale
    assert all(b > a for a, b in zip(shares, shares[1:]))


def test_no_float32_hand_over_where_it_would_not_fit(tiny_network, monkeypatch):
    """At 4096 px a float32 evaluation would need about twice a bfloat16 one: bfloat16 finishes."""
    exacts = []
    original = stylize._lbfgs_tf

    def recording(objective, start, iterations, report, exact=None, preconditioned=False):
        exacts.append(exact)
        return original(objective, start, iterations, report, exact, preconditioned)
    monkeypatch.setattr(stylize, "_lbfgs_tf", recording)
    run = lambda: stylize.stylize(tiny_network, smooth_image(32, 40), [stripes_image(40, 40)],
                                  small_settings(iterations=2, precision="bfloat16"))
    run()
    monkeypatch.setattr(stylize, "_available_memory", lambda: 1000)
    assert run().status == "done"
    assert exacts[0] is not None and exacts[1] is None


def test_returning_allocator_only_for_large_outputs_and_never_over_the_users_choice(monkeypatch):
    monkeypatch.delenv("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", raising=False)
    stylize.use_returning_allocator(2048, 1536)
    assert "TF_ONEDNN_USE_SYSTEM_ALLOCATOR" not in os.environ
    stylize.use_returning_allocator(3072, 4096)
    assert os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] == "true"
    monkeypatch.setenv("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "false")
    stylize.use_returning_allocator(3072, 4096)
    assert os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] == "false"


def test_activation_bytes_counts_every_stored_map(tiny_network):
    one = stylize.activation_bytes(tiny_network, ["relu1_1"], 10, 10, "float32")
    assert one == 2 * 10 * 10 * 4 * 4  # conv1_1 and relu1_1, 4 channels, 4 bytes
    assert stylize.activation_bytes(tiny_network, ["relu1_1"], 10, 10, "bfloat16") == one // 2


def test_fast_preset_is_the_writeup_objective_with_faster_machinery():
    fast, writeup = settings_for_preset("fast"), settings_for_preset("writeup")
    assert (fast.content_layers, fast.style_layers) == (writeup.content_layers, writeup.style_layers)
    assert (fast.content_weight, fast.style_weight) == (writeup.content_weight, writeup.style_weight)
    assert fast.precision == "auto" and writeup.precision == "float32"
    assert settings_for_preset("gatys2016").precision == "float32"
    assert fast.optimizer == "lbfgs" and writeup.optimizer == "adam"


# The seed recipes: the Keras example, the TF tutorial and the write-up to the letter.

def test_keras_preset_style_loss_uses_channels_3_and_the_images_rows_times_cols(tiny_network):
    from presets import settings_for_preset
    from vgg import VGG
    s = settings_for_preset("keras")
    net = VGG(tiny_network, list(s.content_layers) + list(s.style_layers), pooling="max")
    style = images.resize_nearest(STYLE, *CONTENT.shape[:2])  # Keras stretches it to the content's size
    objective = stylize.Objective(net, CONTENT, [style], [1.0], s)
    image = np.clip(CONTENT + np.random.default_rng(0).uniform(-30, 30, CONTENT.shape), 0, 255).astype(np.float32)
    content, style_term, tv = objective.terms(image[np.newaxis]).numpy()

    def gram(f):
        flat = f.numpy()[0].reshape(-1, f.shape[3]).astype(np.float64)
        return flat.T @ flat
    mine, target, photo = net(image[np.newaxis]), net(style[np.newaxis]), net(CONTENT[np.newaxis])
    rows_cols = CONTENT.shape[0] * CONTENT.shape[1]
    expected = sum(1.0 / 5 * np.sum((gram(mine[name]) - gram(target[name])) ** 2) / (4 * 3 ** 2 * rows_cols ** 2)
                   for name in s.style_layers)
    assert style_term == pytest.approx(expected, rel=1e-3)
    assert content == pytest.approx(np.sum((mine["relu5_2"].numpy() - photo["relu5_2"].numpy()) ** 2.0), rel=1e-4)
    down, right = np.diff(image, axis=0)[:, :-1] ** 2, np.diff(image, axis=1)[:-1] ** 2
    assert tv == pytest.approx(np.sum((down.astype(np.float64) + right) ** 1.25), rel=1e-4)


def test_lbfgs_rounds_start_afresh_every_n_evaluations(tiny_network, monkeypatch):
    calls = []
    minimize = stylize.scipy.optimize.minimize

    def counted(*args, **kwargs):
        calls.append(kwargs["options"]["maxfun"])
        return minimize(*args, **kwargs)
    monkeypatch.setattr(stylize.scipy.optimize, "minimize", counted)
    result, seen = run(tiny_network, optimizer="lbfgs", iterations=12, lbfgs_round=4, clip_image=False,
                       lbfgs_impl="scipy")
    assert result.status == "done" and seen[-1].iteration == 12
    assert len(calls) >= 2 and set(calls) == {4}  # Keras: 10 calls of fmin_l_bfgs_b(maxfun=20)
    calls.clear()
    run(tiny_network, optimizer="lbfgs", iterations=12, lbfgs_impl="scipy")
    assert len(calls) == 1  # without rounds, one run keeps its history


def test_without_clipping_the_image_may_leave_0_255(tiny_network):
    def extremes(clip):
        seen = run(tiny_network, init="content", learning_rate=60.0, iterations=3, clip_image=clip)[1]
        return min(float(p.image().min()) for p in seen), max(float(p.image().max()) for p in seen)
    low, high = extremes(False)
    assert low < 0 or high > 255
    low, high = extremes(True)
    assert low >= 0 and high <= 255


def test_tf_tutorial_adam_steps_are_the_tutorials_arithmetic(tiny_network):
    """lr 255 * 0.02 and epsilon 0.1/255 on our 0..255 image take the steps that tf.keras Adam(0.02,
    beta_1=0.99, epsilon=0.1) takes on the tutorial's 0..1 image, with its losses and clip_0_1."""
    import keras
    from presets import settings_for_preset
    from vgg import VGG
    s = settings_for_preset("tf-tutorial", iterations=3)
    style = stripes_image(40, 40)  # the output's long side, as the tutorial loads both images
    # A photo without flat areas: |d| has no gradient at d = 0, where rounding decides the side.
    content = np.clip(CONTENT + np.random.default_rng(1).uniform(-20, 20, CONTENT.shape), 0, 255)
    content = content.astype(np.float32)
    seen = []
    stylize.stylize(tiny_network, content, [style], s, lambda p: seen.append(p.image()) or True)

    net = VGG(tiny_network, list(s.content_layers) + list(s.style_layers), pooling="max")

    def gram(f):  # the tutorial's gram_matrix
        return tf.linalg.einsum("bijc,bijd->bcd", f, f) / tf.cast(f.shape[1] * f.shape[2], tf.float32)
    x = tf.Variable(content[np.newaxis] / 255.0)
    # Its targets come from its 0..1 images, times 255 in the model, as the tutorial's extractor does.
    style_targets = {name: gram(f) for name, f in net(style[np.newaxis] / 255.0 * 255.0).items()
                     if name in s.style_layers}
    content_target = net(x * 255.0)["relu5_2"]
    opt = keras.optimizers.Adam(learning_rate=0.02, beta_1=0.99, epsilon=1e-1)
    for step in range(1, 4):
        with tf.GradientTape() as tape:
            features = net(x * 255.0)
            style_loss = tf.add_n([tf.reduce_mean((gram(features[name]) - style_targets[name]) ** 2)
                                   for name in s.style_layers]) * 1e-2 / 5
            content_loss = tf.reduce_mean((features["relu5_2"] - content_target) ** 2) * 1e4 / 1
            loss = style_loss + content_loss + 30 * tf.image.total_variation(x)
        opt.apply_gradients([(tape.gradient(loss, x), x)])
        x.assign(tf.clip_by_value(x, 0.0, 1.0))
        assert np.abs(seen[step] - seen[0]).max() > 1  # the step moved the image
        np.testing.assert_allclose(seen[step], 255.0 * x.numpy()[0], atol=5e-3)


def test_writeup_exact_preprocessing_of_a_pixel(tiny_network):
    """Keras' preprocess_input (BGR flip, BGR mean) and then the network's own RGB mean once more."""
    content = np.full((20, 24, 3), 128.0, np.float32)
    content[0, 0] = [200.0, 100.0, 50.0]  # R, G, B
    style = stripes_image(30, 45)
    exact_content, (exact_style,) = stylize.writeup_exact_images(content, [style])
    np.testing.assert_allclose(tiny_network.mean_pixel, [123.68, 116.779, 103.939], atol=1e-4)
    seen_by_network = exact_content[0, 0] - tiny_network.mean_pixel
    np.testing.assert_allclose(seen_by_network, [50 - 103.939 - 123.68, 100 - 116.779 - 116.779,
                                                 200 - 123.68 - 103.939], atol=1e-3)
    # The style is stretched to the content's exact size with nearest neighbour: only its own pixels.
    assert exact_style.shape == (20, 24, 3)
    style_pixels = {tuple(p) for p in images.keras_preprocess(style).reshape(-1, 3)}
    assert all(tuple(p) in style_pixels for p in exact_style.reshape(-1, 3))


def test_writeup_exact_truncates_the_output_and_does_not_clip_the_variable(tiny_network):
    s = settings(writeup_exact=True, init="blend", iterations=2, optimizer="adam")
    first = []
    run(tiny_network, lambda p: first.append(p.image()) and False, writeup_exact=True, init="blend")
    exact_content, (exact_style,) = stylize.writeup_exact_images(CONTENT, [STYLE])
    start = stylize.initial_image(s, exact_content, exact_style, tiny_network.mean_pixel)
    np.testing.assert_array_equal(first[0], np.floor(np.clip(start, 0, 255)))
    assert np.any(np.floor(np.clip(start, 0, 255)) != np.round(np.clip(start, 0, 255)))
    # From the (preprocessed, partly negative) content, nothing is clipped: the content loss starts at 0.
    _, seen = run(tiny_network, writeup_exact=True, init="content", iterations=1)
    assert seen[0].content_loss == pytest.approx(0.0, abs=1e-6)
    assert exact_content.min() < 0


# ---- perceptual controls (Gatys et al. 2017): masks and style layer sets (moved from test_figures.py)

LAYERS = {"relu1_1": 0.5, "relu3_1": 0.5}


def objective(network, styles, masks=None, **changes):
    settings = dataclasses.replace(stylize.Settings(content_layers={"relu4_2": 1.0}, style_layers=LAYERS),
                                   **changes)
    net = vgg.VGG(network, ["relu4_2", *LAYERS])
    blend = [1.0 / len(styles)] * len(styles)
    return stylize.Objective(net, CONTENT, styles, blend, settings, masks)


def style_term(obj, image=CONTENT):
    return float(obj.terms(image[np.newaxis])[1])


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


@pytest.mark.parametrize("units", sorted(losses.UNITS))
def test_calibration_factor_is_the_reference_times_the_gradient_norm_ratio(tiny_network, tmp_path,
                                                                            monkeypatch, units):
    monkeypatch.setattr(stylize.vgg, "_cache_folder", lambda path: tmp_path)
    settings, objective, start, content, style = _objective_and_start(tiny_network, (40, 48), units,
                                                                      "auto")
    content_norm, style_norm = objective.gradient_norms(start)
    factor = stylize.resolve_balance(settings, lambda: objective, tiny_network, start, content, [style], None)
    assert factor == pytest.approx(losses.UNITS[units].reference_balance * content_norm / style_norm,
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


@pytest.mark.parametrize("stored", ["NaN", "Infinity", "-1", "0", '"abc"', "null"])
def test_a_damaged_stored_balance_factor_is_measured_again(tiny_network, tmp_path, monkeypatch, stored):
    monkeypatch.setattr(stylize.vgg, "_cache_folder", lambda path: tmp_path)
    settings = presets.settings_for_preset("gatys2016", balance="auto", normalize_network=False,
                                            iterations=1, seed=0)
    content, style = smooth_image(40, 48), stripes_image(40, 48)
    measured = stylize.stylize(tiny_network, content, [style], settings).balance
    cache = tmp_path / "balance.json"
    (key,) = json.loads(cache.read_text())
    cache.write_text('{"%s": %s}' % (key, stored))
    assert stylize.stylize(tiny_network, content, [style], settings).balance == pytest.approx(measured)
    assert json.loads(cache.read_text())[key] == pytest.approx(measured)


def test_coarse_to_fine_calibrates_at_every_scale(tiny_network, tmp_path, monkeypatch):
    """In printed units the balance point moves with the size: each scale gets its own factor, and
    the run reports the full size's."""
    monkeypatch.setattr(stylize.vgg, "_cache_folder", lambda path: tmp_path)
    measured = []
    real = stylize.resolve_balance

    def spy(settings, objective, network, start, *rest):
        measured.append((start.shape[:2], real(settings, objective, network, start, *rest)))
        return measured[-1][1]
    monkeypatch.setattr(stylize, "resolve_balance", spy)
    settings = presets.settings_for_preset("fast", scales=((0.5, 2), (1.0, 2)), precision="float32", seed=0)
    result = stylize.stylize(tiny_network, smooth_image(64, 80), [stripes_image(64, 80)], settings)
    assert [shape for shape, _ in measured] == [(32, 40), (64, 80)]
    assert measured[0][1] != pytest.approx(measured[1][1], rel=0.05)
    assert result.balance == measured[1][1]


@pytest.mark.parametrize("field, value", [("loss_units", "metric"), ("balance", -1.0),
                                          ("balance", float("nan")), ("balance", "sometimes")])
def test_bad_units_or_balance_is_a_user_error(tiny_network, field, value):
    settings = dataclasses.replace(stylize.Settings(), **{field: value})
    with pytest.raises(UserError):
        stylize.stylize(tiny_network, smooth_image(40, 48), [smooth_image(40, 48)], settings)


def test_recomputed_layer_losses_give_the_same_terms_and_gradient(tiny_network):
    """With recompute each layer's loss, and the float32 copy of the map it takes, is recomputed in
    the backward pass too; a masked style goes the same way."""
    mask = np.linspace(0.0, 1.0, 32 * 40, dtype=np.float32).reshape(32, 40)
    start = tf.constant(smooth_image(32, 40, seed=5)[np.newaxis])

    def terms_and_gradient(recompute):
        net = vgg.VGG(tiny_network, [*SMALL["content_layers"], *SMALL["style_layers"]], recompute=recompute)
        objective = stylize.Objective(net, CONTENT, [STYLE], [1.0], settings(), masks=[mask])
        with tf.GradientTape() as tape:
            tape.watch(start)
            terms = objective.terms(start)
            total = objective.total(terms)
        return terms.numpy(), tape.gradient(total, start).numpy()
    (stored_terms, stored), (recomputed_terms, recomputed) = terms_and_gradient(False), terms_and_gradient(True)
    assert np.abs(stored).max() > 0 and stored_terms[1] > 0
    np.testing.assert_allclose(recomputed_terms, stored_terms, rtol=1e-5)
    np.testing.assert_allclose(recomputed, stored, rtol=1e-4, atol=1e-4 * np.abs(stored).max())


@pytest.mark.parametrize("precision, calibrated_in", [("bfloat16", tf.bfloat16), ("float16", tf.float32)])
def test_calibration_runs_in_the_runs_precision_but_never_float16(tiny_network, tmp_path, monkeypatch,
                                                                   precision, calibrated_in):
    """In the run's precision to fit where the run fits; float16 has no loss scaling there to keep
    the gradient norms finite, so it calibrates in float32."""
    monkeypatch.setattr(stylize.vgg, "_cache_folder", lambda path: tmp_path)
    seen = []
    monkeypatch.setattr(stylize.Objective, "gradient_norms",
                        lambda self, image: seen.append(self.vgg.dtype) or (1.0, 1.0))
    settings = presets.settings_for_preset("fast", scales=((1.0, 1),), precision=precision, seed=0)
    result = stylize.stylize(tiny_network, smooth_image(32, 40), [stripes_image(32, 40)], settings)
    assert seen == [calibrated_in]
    assert result.balance == pytest.approx(losses.UNITS[settings.loss_units].reference_balance)  # norms 1, 1
