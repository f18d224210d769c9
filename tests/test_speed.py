"""The speed and memory levers: reduced precision, recomputation, coarse-to-fine, the benchmark."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import benchmark
import stylize
import vgg
from conftest import smooth_image, stripes_image
from errors import UserError
from presets import settings_for_preset
from quiet_tf import tf

IMAGE = smooth_image(32, 40)[np.newaxis]


def test_bfloat16_network_matches_float32_and_returns_float32(tiny_network):
    outputs = ["relu1_1", "relu3_1", "relu5_1"]
    full = vgg.VGG(tiny_network, outputs)(IMAGE)
    half = vgg.VGG(tiny_network, outputs, dtype="bfloat16")(IMAGE)
    for name in outputs:
        assert half[name].dtype == tf.float32
        scale = float(tf.reduce_max(tf.abs(full[name])))
        assert float(tf.reduce_max(tf.abs(half[name] - full[name]))) < 0.05 * scale


def test_recompute_gives_the_same_gradient(tiny_network):
    outputs = ["relu1_1", "relu2_1", "relu4_2", "relu5_1"]
    x = tf.Variable(IMAGE)

    def gradient(recompute):
        net = vgg.VGG(tiny_network, outputs, recompute=recompute)
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.square(f)) for f in net(x).values()])
        return tape.gradient(loss, x).numpy()
    stored, recomputed = gradient(False), gradient(True)
    assert np.abs(stored).max() > 0
    np.testing.assert_allclose(recomputed, stored, rtol=1e-4, atol=1e-4 * np.abs(stored).max())


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(vgg.tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(vgg, "_cpu_has_bf16", lambda: False)
    assert vgg.resolve_precision("auto") == "float32"
    monkeypatch.setattr(vgg, "_cpu_has_bf16", lambda: True)
    assert vgg.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(vgg.tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    monkeypatch.setattr(vgg, "_compute_capability", lambda gpu: (7, 5))
    assert vgg.resolve_precision("auto") == "float16"  # no fast bfloat16 before Ampere
    monkeypatch.setattr(vgg, "_compute_capability", lambda gpu: (8, 0))
    assert vgg.resolve_precision("auto") == "bfloat16"
    assert vgg.resolve_precision("float32") == "float32"
    with pytest.raises(UserError, match="precision must be one of"):
        vgg.resolve_precision("int8")


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


IMPLEMENTATIONS = pytest.mark.parametrize("run_lbfgs", [stylize._lbfgs_tf, stylize._lbfgs], ids=["tf", "scipy"])


@pytest.mark.parametrize("run_lbfgs", [stylize._lbfgs])  # lbfgs.py: not there yet
def test_lbfgs_goes_on_in_float32_when_rounding_noise_stops_it(run_lbfgs):
    keep_going = lambda *args: True
    rounded_only, _, _ = run_lbfgs(Quadratic(step=1e3), START, 300, keep_going)
    exact = Quadratic()
    handed_over, _, status = run_lbfgs(Quadratic(step=1e3), START, 300, keep_going,
                                            exact=lambda: exact)
    assert status == "done" and exact.calls > 0
    # The rounded loss cannot see below about 500; the exact one takes the image far below.
    assert exact.exact_loss(rounded_only) > 100.0
    assert exact.exact_loss(handed_over) < 1e-2 * exact.exact_loss(rounded_only)


class Overflowing(Quadratic):
    """The quadratic, but infinite once the image comes near its minimum: float16's small range."""

    def terms(self, x):
        terms = super().terms(x)
        return tf.where(terms[0] < 1e4, np.inf, terms)


@IMPLEMENTATIONS
def test_lbfgs_goes_on_in_float32_when_reduced_precision_overflows(run_lbfgs):
    seen = []
    exact = Quadratic()
    image, _, status = run_lbfgs(Overflowing(), START, 200, lambda i, *a: seen.append(i) or True,
                                      exact=lambda: exact)
    assert status == "done" and exact.exact_loss(image) < 1.0
    assert seen == list(range(len(seen)))  # the overflowing evaluation is no iteration
    without, _, status = run_lbfgs(Overflowing(), START, 200, lambda *a: True)
    assert status == "diverged" and exact.exact_loss(without) >= 1e4


@pytest.mark.parametrize("run_lbfgs", [stylize._lbfgs])  # lbfgs.py: not there yet
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


def test_benchmark_quick_runs_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--json", str(out), "--only", "steps,memory,quality,startup,feedforward"]) == 0
    results = json.loads(out.read_text())
    steps = results["steps"]
    assert {(r["precision"], r["optimizer"]) for r in steps} >= {("float32", "adam"), ("float32", "lbfgs")}
    assert all(r["seconds"] > 0 for r in steps)
    assert all(r["peak_rss_gb"] > 0 for r in results["memory"])
    quality = results["quality"]
    assert quality["reference_seconds"] > 0 and quality["target_loss"] > 0
    assert results["startup"]["seconds"] > 0
    assert results["feedforward"][0]["median"] > 0 and results["feedforward"][-1]["steps_per_second"] > 0
    assert "Adam step" in capsys.readouterr().out


def test_memory_probe_reports_its_own_peak_not_its_parents():
    held = bytearray(2 * 2 ** 30)  # this process's peak is now over 2 GB
    held[::4096] = b"x" * len(range(0, len(held), 4096))  # touch every page: resident
    code = "import benchmark; print(benchmark.peak_rss_kb())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(benchmark.__file__).parent, check=True)
    del held
    child_peak_gb = int(done.stdout.split()[-1]) / 2 ** 20
    assert 0.05 < child_peak_gb < 1.5  # TensorFlow's import, not the 2 GB it never held
