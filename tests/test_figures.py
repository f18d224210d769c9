"""figures.py: the paper's figures as grids of tiles, reused and resumed; a real-network render."""
import json

import numpy as np
import pytest

import images
import stylize
import vgg
from conftest import STYLE_A, STYLE_B, smooth_image
from quiet_tf import tf


# ---- figures.py ----------------------------------------------------------------------------

import figures  # noqa: E402


@pytest.fixture
def figure_inputs(tmp_path, tiny_mat):
    content = images.save_image(tmp_path / "content.png", smooth_image(40, 48))
    styles = [images.save_image(tmp_path / f"style{i}.png", im) for i, im in enumerate((STYLE_A, STYLE_B))]
    return ["--content", str(content), "--network", str(tiny_mat), "--iterations", "2", "--max-size", "32"], styles


def count_runs(monkeypatch):
    import stylize as module
    calls = []
    original = module.stylize

    def counting(*args, **kwargs):
        calls.append(args[3])
        return original(*args, **kwargs)
    monkeypatch.setattr(module, "stylize", counting)
    return calls


def test_figure2_grid_tiles_settings_and_reuse(figure_inputs, tmp_path, monkeypatch):
    common, styles = figure_inputs
    out = tmp_path / "fig2"
    calls = count_runs(monkeypatch)
    argv = ["figure2", *common, "--style", *map(str, styles), "--out", str(out)]
    assert figures.main(argv) == 0
    assert len(calls) == 2 and all(c.content_weight == pytest.approx(1e-3) for c in calls)
    assert all(c.normalize_network and c.optimizer == "lbfgs" and c.init == "noise" for c in calls)
    tiles = sorted((out / "tiles").glob("*.png"))
    assert len(tiles) == 2 and all(t.with_suffix(".json").exists() for t in tiles)
    record = json.loads(tiles[0].with_suffix(".json").read_text())
    assert record["settings"]["iterations"] == 2 and record["settings"]["style_weight"] == 1.0
    # The tile says in which units and with which calibration it was made.
    assert record["settings"]["loss_units"] == "authors" and record["settings"]["balance"] == "auto"
    assert record["balance_factor"] > 0 and record["balance_factor"] != 1.0
    assert all(c.loss_units == "authors" and c.balance == "auto" for c in calls)
    figure = json.loads((out / "figure2.json").read_text())
    assert all(t["balance_factor"] > 0 for t in figure["tiles"])
    grid = images.load_image(out / "figure2.png")
    assert grid.shape[1] > 3 * 32  # content and two results side by side
    assert len(json.loads((out / "figure2.json").read_text())["tiles"]) == 2
    assert figures.main(argv) == 0  # everything exists now: nothing is computed again
    assert len(calls) == 2


def test_figure3_is_layers_against_ratios(figure_inputs, tmp_path, monkeypatch):
    common, styles = figure_inputs
    calls = count_runs(monkeypatch)
    assert figures.main(["figure3", *common, "--style", str(styles[0]), "--ratios", "1e-4,1e-2",
                         "--out", str(tmp_path / "fig3")]) == 0
    assert len(calls) == 10
    assert [list(c.style_layers) for c in calls[::2]] == [
        ["relu1_1"], ["relu1_1", "relu2_1"], ["relu1_1", "relu2_1", "relu3_1"],
        ["relu1_1", "relu2_1", "relu3_1", "relu4_1"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]]
    assert [c.content_weight for c in calls[:2]] == [pytest.approx(1e-4), pytest.approx(1e-2)]
    grid = images.load_image(tmp_path / "fig3" / "figure3.png")
    assert grid.shape[0] > 5 * 27 and grid.shape[1] > 2 * 32


def test_figure_init_starts_from_content_style_and_noise(figure_inputs, tmp_path, monkeypatch):
    common, styles = figure_inputs
    calls = count_runs(monkeypatch)
    assert figures.main(["figure-init", *common, "--style", str(styles[0]), "--noise-seeds", "2",
                         "--out", str(tmp_path / "init")]) == 0
    assert [(c.init, c.seed) for c in calls] == [("content", 0), ("style", 0), ("noise", 0), ("noise", 1)]


def test_an_interrupted_figure_continues_where_it_stopped(figure_inputs, tmp_path, monkeypatch):
    common, styles = figure_inputs
    out = tmp_path / "fig"
    argv = ["figure3", *common, "--style", str(styles[0]), "--ratios", "1e-3", "--out", str(out)]
    import stylize as module
    original, calls = module.stylize, []

    def stops_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # as if Ctrl-C was pressed during the third tile
            monitor = args[4]
            return original(*args[:4], lambda p: monitor(p) and p.iteration < 1, **kwargs)
        return original(*args, **kwargs)
    monkeypatch.setattr(module, "stylize", stops_at_the_third)
    assert figures.main(argv) == 130
    assert len(list((out / "tiles").glob("*_????????.png"))) == 2
    assert len(list((out / "tiles").glob("*.interrupted.png"))) == 1
    assert not (out / "figure3.png").exists()
    calls.clear()
    monkeypatch.setattr(module, "stylize", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert figures.main(argv) == 0
    assert len(calls) == 3  # the two finished tiles were reused
    assert (out / "figure3.png").exists()


def test_figures_bad_input(figure_inputs, tmp_path, capsys):
    common, styles = figure_inputs
    common[1] = str(tmp_path / "missing.jpg")
    assert figures.main(["figure-init", *common, "--style", str(styles[0]), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: content image") and "does not exist" in err


def test_real_network_renders_a_small_figure3(real_network_path, tmp_path):
    content = images.save_image(tmp_path / "c.png", smooth_image(48, 64))
    style = images.save_image(tmp_path / "s.png", STYLE_A)
    out = tmp_path / "fig3"
    assert figures.main(["figure3", "--content", str(content), "--style", str(style), "--network",
                         str(real_network_path), "--iterations", "40", "--max-size", "64",
                         "--ratios", "1e-4,1e-2", "--out", str(out)]) == 0
    grid = images.load_image(out / "figure3.png")
    assert grid.shape[0] > 5 * 48
    tiles = sorted((out / "tiles").glob("*.png"))
    assert len(tiles) == 10
    # More style weight (smaller alpha/beta) moves the result further from the content photo.
    def distance(ratio):
        path = next(t for t in tiles if t.name.startswith(f"relu1_1+relu2_1+relu3_1+relu4_1+relu5_1_{ratio}_"))
        return np.abs(images.load_image(path) - images.load_image(content)).mean()
    assert distance("0.0001") > distance("0.01")


def test_a_real_figure2_tile_at_its_defaults_is_styled(real_network_path):
    """With real weights: the default tile moves well towards the painting's style while staying
    much nearer the photo than white noise is."""
    from pathlib import Path as _Path
    net = vgg.load(real_network_path)
    content = images.fit_long_side(images.load_image(_Path(figures.__file__).parent / "examples" / "chelsea.jpg"), 96)
    style = images.load_image(_Path(figures.__file__).parent / "examples" / "swirls.jpg")
    args = figures.parse_args(["figure2", "--content", "c.png", "--style", "s.png", "--out", "o",
                               "--iterations", "100"])
    settings = figures._with_ratio(figures.base_settings(args), args.ratio)
    result = stylize.stylize(net, content, [style], settings)
    normalised = vgg.normalize(net, *images.sample_photos(), pooling=settings.pooling)
    layers = list(settings.content_layers) + list(settings.style_layers)
    objective = stylize.Objective(vgg.VGG(normalised, layers), content, [style], np.array([1.0]), settings)
    terms = lambda image: objective.terms(tf.constant(image[np.newaxis], tf.float32)).numpy()
    noise = np.clip(stylize.initial_image(settings, content, style, net.mean_pixel), 0, 255)
    out, photo, start = terms(result.image), terms(content), terms(noise)
    assert out[1] < 0.6 * photo[1]  # style loss well below the photo's (measured: 0.49x)
    assert out[0] < 0.3 * start[0]  # content loss well below white noise's
