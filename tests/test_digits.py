"""The digits study (digits.py) and its reader (digit_reader.py), on tiny data: scikit-learn's digits
or a few MNIST-like ones, a VGG16-shaped .mat with a few channels, 16 px images, 2 steps per stage."""
import gzip
import json

import numpy as np
import pytest

import digits
import fast_style
import fast_train
import images
import progress
import vgg
from conftest import stop_after, stripes_image
from digit_reader import DigitReader
from errors import UserError

TINY = ["--widths", "8,8,8", "--image-size", "16", "--batch-size", "2"]


def cli(*args):
    return fast_style.main([str(a) for a in args])


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    return images.save_image(tmp_path_factory.mktemp("style") / "style.png", stripes_image(32, 32))


# ---- the digits ---------------------------------------------------------------------------------

def write_idx(path, array, kind=8):
    header = bytes([0, 0, kind, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def mnist_like(count=5):
    """`count` 28x28 uint8 digits: a white bar on black."""
    raw = np.zeros((count, 28, 28), np.uint8)
    raw[:, 4:24, 12:16] = 255
    return raw


def test_scikit_learns_digits_come_white_on_black_with_labels_and_upscale_to_rgb():
    source = digits.load_source(None)
    assert source.raw.shape == (1797, 8, 8) and source.labels.shape == (1797,)
    assert set(source.labels) == set(range(10)) and "scikit-learn" in source.name
    found = digits.as_rgb(source.raw[:5], 20)
    assert found.shape == (5, 20, 20, 3) and found.dtype == np.float32
    assert found.min() >= 0 and found.max() <= 255 and found.max() > 200
    assert np.array_equal(found[..., 0], found[..., 1]) and np.array_equal(found[..., 1], found[..., 2])
    assert found[:, 0, 0].max() < 30  # black background


@pytest.mark.parametrize("write", [
    lambda path: np.savez(path / "mnist.npz", x_train=mnist_like(), y_train=np.arange(5), x_test=mnist_like(1)),
    lambda path: (write_idx(path / "train-labels-idx1-ubyte", np.arange(5)),
                  write_idx(path / "train-images-idx3-ubyte", mnist_like())),
    lambda path: (write_idx(path / "train-labels-idx1-ubyte.gz", np.arange(5)),
                  write_idx(path / "train-images-idx3-ubyte.gz", mnist_like())),
])
def test_mnist_files_load_with_their_labels(tmp_path, write):
    write(tmp_path)
    path = next(p for p in tmp_path.iterdir() if "labels" not in p.name)
    source = digits.load_source(path)
    assert source.raw.shape == (5, 28, 28) and path.name in source.name
    assert list(source.labels) == [0, 1, 2, 3, 4]
    assert source.raw[:, 14, 14].min() > 200 and source.raw[:, 1, 1].max() < 30  # the bar, the background


@pytest.mark.parametrize("write, message", [
    (lambda path: (path / "notes.txt").write_text("hello"), "neither a .npz nor an IDX file"),
    (lambda path: write_idx(path / "train-labels-idx1-ubyte", np.zeros(5)), "label file"),
    (lambda path: (path / "cut-idx3-ubyte").write_bytes(write_idx(path / "x", mnist_like()).read_bytes()[:300]),
     "truncated"),
    (lambda path: np.savez(path / "other.npz", a=np.zeros(3), b=np.zeros(3)), "not x_train and y_train"),
    (lambda path: np.savez(path / "unlabelled.npz", x_train=mnist_like()), "not x_train and y_train"),
    (lambda path: np.savez(path / "flat.npz", x_train=np.zeros(3), y_train=np.zeros(3)), "not digit images"),
    (lambda path: np.savez(path / "short.npz", x_train=mnist_like(), y_train=np.zeros(4)), "4 labels for 5"),
    (lambda path: write_idx(path / "train-images-idx3-ubyte", mnist_like()), "put MNIST's labels file"),
    (lambda path: (path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip"), "cannot be read as a .npz"),
    (lambda path: (path / "broken.gz").write_bytes(b"\x1f\x8b\x08\x00 not gzip"), "damaged gzip"),
])
def test_a_bad_mnist_file_gives_one_clear_error(tmp_path, write, message):
    write(tmp_path)
    path = max(tmp_path.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    with pytest.raises(UserError, match=message):
        digits.load_source(path)


# ---- the reader ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reader():
    source = digits.load_source(None)
    return DigitReader.train(source.raw[:300], source.labels[:300]), source


def test_a_clean_digit_is_read_as_itself(reader):
    """Clean digits, as the study's networks receive them (RGB, upscaled), are read as what they are,
    also painted in colours on a lighter ground (what the reader's contrast stretch is for)."""
    reader, source = reader
    raw, labels = source.raw[:300], source.labels[:300]
    assert reader.size == 8 and reader.trained_on == 300
    assert list(reader.read(raw)) == list(labels)
    clean = digits.as_rgb(raw, 32)
    assert list(reader.read(clean)) == list(labels)
    painted = 40 + clean * np.array([0.3, 0.6, 0.2], np.float32)
    assert list(reader.read(painted)) == list(labels)
    assert reader.accuracy(clean, labels) == 1.0
    assert reader.accuracy(clean, (labels + 1) % 10) == 0.0


def test_the_reader_reads_digits_it_did_not_learn(reader):
    reader, source = reader
    assert reader.accuracy(digits.as_rgb(source.raw[300:500], 32), source.labels[300:500]) > 0.8


def test_a_reader_needs_two_classes():
    with pytest.raises(UserError, match="at least two classes"):
        DigitReader.train(mnist_like(4).astype(np.float32), np.zeros(4))


# ---- the report and the sheet -------------------------------------------------------------------

def measured_example():
    """{run: {seed: metrics}}: A reads 50, 60 and 70% over three seeds, B 10 points more."""
    def metrics(accuracy, content):
        return {"reader_accuracy": accuracy, "content": content, "style": 0.002, "tv": 1.0, "total": content}
    return {"A": {0: metrics(0.5, 10.0), 1: metrics(0.6, 11.0), 2: metrics(0.7, 12.0)},
            "B": {0: metrics(0.6, 9.0), 1: metrics(0.7, 10.0), 2: metrics(0.8, 11.0)}}


class FakeReader:
    size, trained_on = 8, 1597

    def describe(self):
        return "a fake reader"


def example_report():
    settings = fast_train.Settings(style="s", data="d", network="n", image_size=32)
    study = digits.Study(settings, 300, 300, seeds=(0, 1, 2), source="some digits")
    return digits.build_report(study, FakeReader(), 0.99, measured_example(), {"content": 1.0, "style": 50.0})


def test_the_report_gives_each_run_per_seed_mean_and_spread():
    report = example_report()
    assert report["seeds"] == [0, 1, 2] and report["stage1_steps"] == 300 and report["held_out_digits"] == 200
    assert report["reader"] == {"what": "a fake reader", "input_size": 8, "trained_on": 1597,
                                "clean_accuracy": 0.99}
    a, b = report["runs"]["A"], report["runs"]["B"]
    assert set(a) == {"per_seed", "mean", "sd", "min", "max"} and set(a["per_seed"]) == {"0", "1", "2"}
    assert set(a["mean"]) == set(digits.METRICS)
    assert a["mean"]["reader_accuracy"] == pytest.approx(0.6) and a["sd"]["reader_accuracy"] == pytest.approx(0.1)
    assert b["min"]["content"] == 9.0 and b["max"]["content"] == 11.0
    difference = report["B_minus_A"]
    assert difference["mean"]["reader_accuracy"] == pytest.approx(0.1)
    assert difference["sd"]["reader_accuracy"] == pytest.approx(0.0, abs=1e-12)
    assert difference["mean"]["content"] == pytest.approx(-1.0)
    json.dumps(report)  # all plain numbers


def test_the_sheet_labels_carry_the_numbers(tmp_path):
    report = example_report()
    reader_line, line_a, line_b = digits.summary_lines(report)
    assert "99.0%" in reader_line and "200 clean held-out digits" in reader_line
    assert line_a.startswith("A: stage 1 for 600 steps") and line_b.startswith("B: stage 1 for 300, stage 2")
    assert "read 60.0% ± 10.0%" in line_a and "content 11 ± 1" in line_a and "over 3 seeds" in line_a
    assert "read 70.0% ± 10.0%" in line_b and "content 10 ± 1" in line_b
    row = digits.row_label("B", 2, measured_example()["B"][2])
    assert row == "B seed 2: read 80%, content 11, style 0.002"

    inputs = np.zeros((3, 16, 16, 3), np.float32)
    plain, headed = tmp_path / "plain.png", tmp_path / "headed.png"
    digits.save_comparison(plain, inputs, [inputs], ["A seed 0"])
    digits.save_comparison(headed, inputs, [inputs], ["A seed 0"], header=digits.summary_lines(report))
    plain, headed = images.load_image(plain), images.load_image(headed)
    assert headed.shape[0] > plain.shape[0] and headed.shape[1] > plain.shape[1]  # room for the header
    assert headed[:headed.shape[0] - plain.shape[0]].min() < 100  # text drawn above the digits


def test_the_loss_plot_is_not_stretched_by_an_identity_starts_first_step(tmp_path, monkeypatch):
    """At step 1 of an identity start the content term is 0 (or 1e-12): the log axis starts just
    below the running means instead."""
    from matplotlib.figure import Figure
    limits = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: limits.append(figure.axes[0].get_ylim()))
    entries = [{"step": step, "stage": 1, "content": 1e-12 if step == 1 else 2.0, "style": 1e-3, "tv": 10.0,
                "total": 5.0} for step in range(1, 101)]
    weights = {"content": 1.0, "style": 1000.0, "pixel": 0.0, "tv": 1e-4}
    digits.save_loss_plot(tmp_path / "losses.png", {"A": entries, "B": entries}, weights,
                          {"A": "A: stage 1", "B": "B: two stages"}, 50)
    assert 1e-4 < limits[0][0] < 1e-3  # half the weighted TV term, 1e-3


def test_the_sheet_shows_one_digit_of_each_class_first():
    labels = np.array([3, 3, 1, 0, 1, 2, 3, 0])
    assert digits.sheet_columns(labels, count=5) == [0, 1, 2, 3, 5]


# ---- the study ----------------------------------------------------------------------------------

def study_args(style, tiny16, out, *extra):
    return ["study-digits", "--style", style, "--out", out, "--network", tiny16, "--digits", 8,
            "--held-out", 30, "--stage1-steps", 2, "--stage2-steps", 2, *TINY, *extra]


def test_the_study_trains_both_runs_for_each_seed_measures_them_and_resumes(
        style, tiny16, tmp_path, monkeypatch, capsys, no_export):
    """Interrupted in seed 0's run B (2 shared steps, A's last 2, then 1 of B's), resumed, measured."""
    out = tmp_path / "study"
    with monkeypatch.context() as patch:
        patch.setattr(progress, "graceful_interrupt", lambda: stop_after(6))
        assert cli(*study_args(style, tiny16, out)) == 130
    assert "run B of seed 0 is saved at step 3" in capsys.readouterr().err
    assert cli("study-digits", "--out", out, "--resume", "--style", style) == 1
    assert "drop --style" in capsys.readouterr().err
    assert cli("study-digits", "--out", out, "--resume") == 0
    printed = capsys.readouterr().out
    assert "reader: scikit-learn SVC" in printed and "over 3 seeds" in printed

    assert len(list((out / "data").glob("*.png"))) == 8 and len(list((out / "held_out").glob("*.png"))) == 30
    assert images.load_image(out / "data" / "digit_00000.png").shape == (16, 16, 3)
    report = json.loads((out / "report.json").read_text())
    assert report["seeds"] == [0, 1, 2] and report["held_out_digits"] == 30
    assert report["reader"]["trained_on"] == 1797 - 30 and report["reader"]["clean_accuracy"] > 0.9
    for run in "AB":
        per_seed = report["runs"][run]["per_seed"]
        assert set(per_seed) == {"0", "1", "2"}
        for values in per_seed.values():
            assert 0 <= values["reader_accuracy"] <= 1 and values["content"] > 0 and values["style"] > 0
        assert len({values["content"] for values in per_seed.values()}) == 3  # the seeds differ

    numbers = json.loads((out / "losses.json").read_text())
    for seed in "012":
        a, b = numbers["steps"][seed]["A"], numbers["steps"][seed]["B"]
        assert [entry["stage"] for entry in a] == [1, 1, 1, 1] and [entry["stage"] for entry in b] == [1, 1, 2, 2]
        assert a[:2] == b[:2]  # the shared steps: trained once
        assert a[3]["total"] != b[3]["total"]  # after a step of stage 2
    assert numbers["held_out"]["A"]["0"] == report["runs"]["A"]["per_seed"]["0"]
    sheet = images.load_image(out / "comparison.png")
    assert sheet.shape[0] == 3 * (14 + 4) + 4 + 7 * (64 + 4)  # 3 header lines; inputs, 2 runs x 3 seeds
    assert images.load_image(out / "losses.png").shape[1] > 600

    assert cli(*study_args(style, tiny16, out)) == 1
    assert "already holds a study" in capsys.readouterr().err


def test_the_study_defaults_to_its_own_style_layers_size_and_start(style, tiny16, tmp_path,
                                                              monkeypatch):
    """Its layers take train's 1/C^2 weights (so that --style-weight is on train's scale), not the
    1/n that --style-layers gives layers without a weight; a --style-layers given replaces them."""
    seen = []
    monkeypatch.setattr(digits, "run_study", lambda out, study, network, **options: seen.append(
        study.settings) or digits.StudyResult("interrupted", "A", 0, 0, {}))
    assert cli(*study_args(style, tiny16, tmp_path / "a")) == 130
    assert cli(*study_args(style, tiny16, tmp_path / "b", "--style-layers", "relu1_2",
                           "--no-identity-start")) == 130
    trains = fast_train.Settings(style="", data="", network="").with_defaults(vgg.load(tiny16)).style_layers
    assert seen[0].style_layers == {name: trains[name] for name in fast_style.STUDY_STYLE_LAYERS}
    assert seen[0].style_size == fast_style.STUDY_DEFAULTS["style_size"] != seen[0].image_size
    assert seen[0].identity_start  # the study's generator starts as the identity; train's does not
    assert seen[1].style_layers == {"relu1_2": 1.0} and not seen[1].identity_start


@pytest.mark.parametrize("extra, message", [
    (["--stage2-steps", "0"], "needs both stages"),
    (["--digits", "0"], "--digits must be a positive number"),
    (["--held-out", "0"], "--held-out must be a positive number"),
    (["--digits", "5000"], "holds 1797 digits; the study needs 5030"),
    (["--seeds", "1,1"], "--seeds takes different numbers"),
    (["--seeds", "a"], "--seeds takes numbers"),
    (["--encoder", "vgg:relu9_9"], "'relu9_9' is not in"),
    (["--mnist", "nowhere.npz"], "does not exist"),
    (["--image-size", "4"], "must be at least"),
])
def test_bad_study_options_give_one_clear_error(style, tiny16, tmp_path, capsys, extra, message):
    out = tmp_path / "study"
    assert cli(*study_args(style, tiny16, out), *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and not out.exists()
    assert cli("study-digits", "--out", out, "--resume") == 1
    assert "holds no study" in capsys.readouterr().err
