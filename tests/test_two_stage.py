"""The two-stage schedule of fast_style.py (a generator whose encoder is a copy of VGG's first layers)
and the digits study, on tiny data: a VGG16-shaped .mat with a few channels, 16 px images, a network
of 8 channels, 2 steps per stage."""
import contextlib
import gzip
import json

import numpy as np
import pytest

import digits
import fast_style
import fast_apply
import fast_train
import images
import progress
import transformer
import vgg
from conftest import smooth_image, stripes_image
from errors import UserError
from quiet_tf import tf

TINY = ["--widths", "8,8,8", "--image-size", "16", "--batch-size", "2"]
STAGES = ["--encoder", "vgg:relu3_1", "--stage1-steps", "2", "--stage2-steps", "2"]


def cli(*args):
    return fast_style.main([str(a) for a in args])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A data folder of four images and a style image."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "data").mkdir()
    for i in range(4):
        images.save_image(root / "data" / f"photo{i}.png", smooth_image(20, 24, seed=i))
    return root / "data", images.save_image(root / "style.png", stripes_image(32, 32))


def train_args(inputs, network, model, *extra):
    data, style = inputs
    return ["train", "--style", style, "--data", data, "--network", network, "--model", model, *TINY, *extra]


def shared_layers(net, network):
    """(variable, the .mat's array it copies) for each shared variable of `net`."""
    layers = {layer.name: layer for layer in network.layers}
    return ([(variable, layers[name].kernel) for name, variable in net.encoder.kernels.items()]
            + [(variable, layers[name].bias) for name, variable in net.encoder.biases.items()])


def shared_unchanged(checkpoint, network):
    """Whether the shared layers of a checkpoint's network are bit-identical to the .mat's, for each."""
    net = transformer.TransformNet((8, 8, 8), encoder="vgg:relu3_1", network=network, seed=1)
    tf.train.Checkpoint(network=net).restore(str(checkpoint)).expect_partial()
    return [np.array_equal(variable.numpy(), value) for variable, value in shared_layers(net, network)]


def checkpoint_values(path):
    """{name: value} of every variable of a checkpoint (network and optimizers)."""
    return {name: tf.train.load_variable(str(path), name) for name, _ in tf.train.list_variables(str(path))
            if name not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


@contextlib.contextmanager
def stop_after(checks):
    """graceful_interrupt whose request turns true at its (checks + 1)-th look: a Ctrl-C after
    `checks` steps, as the loop asks before every step."""
    class Request:
        looks = 0

        def __bool__(self):
            self.looks += 1
            return self.looks > checks

    yield Request()


@pytest.fixture
def no_export(monkeypatch):
    monkeypatch.setattr(fast_apply, "export", lambda model_dir: None)


# ---- the generator ------------------------------------------------------------------------------


# ---- the stages ---------------------------------------------------------------------------------

def test_stage_1_leaves_the_shared_layers_bit_identical_and_stage_2_trains_them(tiny16):
    network = vgg.load(tiny16)
    settings = fast_train.Settings(style="", data="", network=str(tiny16), widths=(8, 8, 8), image_size=16,
                                    encoder="vgg:relu3_1", stage1_steps=2, stage2_steps=2)
    training = fast_train.Training(network, stripes_image(16, 16), settings.with_defaults(network),
                                    tf.distribute.get_strategy())
    batch = (tf.constant(np.stack([smooth_image(16, 16, seed=i) for i in range(2)])),
             tf.constant([0, 1], tf.int64))
    probe = tf.constant(smooth_image(16, 16, seed=9)[np.newaxis])
    fresh = vgg.load(tiny16)  # the loss network as the file holds it
    expected = {"loss": vgg.VGG(fresh, list(training.loss.vgg.outputs), pooling="max")(probe),
                "content": vgg.VGG(fresh, list(training.loss.content_vgg.outputs), pooling="max")(probe)}
    shared = shared_layers(training.net, network)
    assert len(shared) == len(training.net.encoder_variables) == 10
    rest = [v.numpy().copy() for v in training.generator_variables]

    for _ in range(2):
        training.train_step(batch, stage2=False)
    for variable, value in shared:
        assert np.array_equal(variable.numpy(), value), variable.name  # bit-identical
    changed = [not np.array_equal(v.numpy(), before) for v, before in zip(training.generator_variables, rest)]
    assert all(changed), [v.name for v, c in zip(training.generator_variables, changed) if not c]

    for _ in range(2):
        training.train_step(batch, stage2=True)
    for variable, value in shared:
        assert not np.array_equal(variable.numpy(), value), variable.name
    assert int(training.optimizer.iterations) == 4 and int(training.encoder_optimizer.iterations) == 2

    # The loss network never trains: its features are those of the file's, before and after.
    for name, net in (("loss", training.loss.vgg), ("content", training.loss.content_vgg)):
        for layer, features in net(probe).items():
            np.testing.assert_array_equal(features.numpy(), expected[name][layer].numpy(), err_msg=layer)
    for layer, original in zip(network.layers, fresh.layers):
        if layer.kernel is not None:
            assert np.array_equal(layer.kernel, original.kernel) and np.array_equal(layer.bias, original.bias)


# ---- resuming -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(inputs, tiny16, tmp_path_factory):
    """Stage 1 for 2 steps and stage 2 for 2, uninterrupted, a checkpoint after every step; exported."""
    model = tmp_path_factory.mktemp("straight") / "model"
    assert cli(*train_args(inputs, tiny16, model, *STAGES, "--checkpoint-every", 1)) == 0
    return model


def test_the_shared_layers_change_only_after_the_stage_boundary(straight, tiny16):
    network = vgg.load(tiny16)
    for step, unchanged in ((2, True), (3, False), (4, False)):  # the manager keeps the last 3
        assert shared_unchanged(straight / "checkpoints" / f"ckpt-{step}", network) == [unchanged] * 10, step
    losses = fast_train.read_losses(straight)
    assert [entry["stage"] for entry in losses] == [1, 1, 2, 2]
    settings = json.loads((straight / "training.json").read_text())
    assert (settings["encoder"], settings["stage1_steps"], settings["stage2_steps"],
            settings["stage2_learning_rate"]) == ("vgg:relu3_1", 2, 2, 1e-4)


def test_a_training_resumed_across_the_stage_boundary_equals_an_uninterrupted_one(
        straight, inputs, tiny16, tmp_path, monkeypatch, capsys, no_export):
    model = tmp_path / "model"
    with monkeypatch.context() as patch:
        patch.setattr(progress, "graceful_interrupt", lambda: stop_after(2))
        assert cli(*train_args(inputs, tiny16, model, *STAGES)) == 130  # Ctrl-C after stage 1
    assert "step 2 is saved" in capsys.readouterr().err
    assert all(shared_unchanged(model / "checkpoints" / "ckpt-2", vgg.load(tiny16)))
    assert cli("train", "--model", model, "--resume") == 0
    resumed = checkpoint_values(model / "checkpoints" / "ckpt-4")
    expected = checkpoint_values(straight / "checkpoints" / "ckpt-4")
    assert resumed.keys() == expected.keys() and any(name.startswith("encoder_optimizer/") for name in expected)
    for name in expected:
        np.testing.assert_allclose(resumed[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert [entry["stage"] for entry in fast_train.read_losses(model)] == [1, 1, 2, 2]


def test_a_generator_with_shared_layers_exports(straight):
    """SavedModel and TFLite of the VGG encoder compute what the checkpoint's network computes."""
    image = smooth_image(19, 26, seed=3)[np.newaxis]
    expected = fast_apply.restore_network(straight)(tf.constant(image)).numpy()
    served = tf.saved_model.load(str(straight / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(image))["stylized"].numpy(), expected, atol=0.01)
    interpreter = tf.lite.Interpreter(str(straight / "model.tflite"))
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], image.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], image)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]),
                               expected, atol=0.05)


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


def test_scikit_learns_digits_come_upscaled_white_on_black_in_rgb():
    found, source = digits.load_digits(None, 20, 5)
    assert found.shape == (5, 20, 20, 3) and found.dtype == np.float32
    assert found.min() >= 0 and found.max() <= 255 and found.max() > 200
    assert np.array_equal(found[..., 0], found[..., 1]) and np.array_equal(found[..., 1], found[..., 2])
    assert found[:, 0, 0].max() < 30  # black background
    assert "scikit-learn" in source and "resized from 8 to 20 px" in source


@pytest.mark.parametrize("write", [
    lambda path: np.savez(path / "mnist.npz", x_train=mnist_like(), y_train=np.zeros(5), x_test=mnist_like(1)),
    lambda path: np.savez(path / "mnist.npz", digits=mnist_like()),
    lambda path: write_idx(path / "train-images-idx3-ubyte", mnist_like()),
    lambda path: write_idx(path / "train-images-idx3-ubyte.gz", mnist_like()),
])
def test_mnist_files_load(tmp_path, write):
    write(tmp_path)
    path = next(tmp_path.iterdir())
    found, source = digits.load_digits(path, 16, 5)
    assert found.shape == (5, 16, 16, 3) and path.name in source
    assert found[:, 8, 8, 0].min() > 200 and found[:, 1, 1, 0].max() < 30  # the bar, the background


@pytest.mark.parametrize("write, message", [
    (lambda path: (path / "notes.txt").write_text("hello"), "neither a .npz nor an IDX file"),
    (lambda path: write_idx(path / "train-labels-idx1-ubyte", np.zeros(5)), "label file"),
    (lambda path: (path / "cut-idx3-ubyte").write_bytes(write_idx(path / "x", mnist_like()).read_bytes()[:300]),
     "truncated"),
    (lambda path: np.savez(path / "other.npz", a=np.zeros(3), b=np.zeros(3)), "no x_train"),
    (lambda path: np.savez(path / "flat.npz", x_train=np.zeros(3)), "not digit images"),
    (lambda path: (path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip"), "cannot be read as a .npz"),
    (lambda path: (path / "broken.gz").write_bytes(b"\x1f\x8b\x08\x00 not gzip"), "damaged gzip"),
])
def test_a_bad_mnist_file_gives_one_clear_error(tmp_path, write, message):
    write(tmp_path)
    path = max(tmp_path.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    with pytest.raises(UserError, match=message):
        digits.load_digits(path, 16, 2)


def test_too_few_digits_say_so(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=mnist_like(3))
    with pytest.raises(UserError, match="holds 3 digits; the study needs 9"):
        digits.load_digits(tmp_path / "mnist.npz", 16, 9)


# ---- the study ----------------------------------------------------------------------------------

def study_args(inputs, tiny16, out, *extra):
    return ["study-digits", "--style", inputs[1], "--out", out, "--network", tiny16, "--digits", 8,
            "--stage1-steps", 2, "--stage2-steps", 2, *TINY, *extra]


@pytest.mark.slow
def test_the_study_compares_both_runs_and_resumes(inputs, tiny16, tmp_path, monkeypatch, capsys, no_export):
    """Interrupted at B's stage boundary (4 steps of A, 2 of B), resumed, then the sheet and plots."""
    out = tmp_path / "study"
    with monkeypatch.context() as patch:
        patch.setattr(progress, "graceful_interrupt", lambda: stop_after(6))
        assert cli(*study_args(inputs, tiny16, out)) == 130
    assert "run B is saved at step 2" in capsys.readouterr().err
    assert cli("study-digits", "--out", out, "--resume", "--style", inputs[1]) == 1
    assert "drop --style" in capsys.readouterr().err
    assert cli("study-digits", "--out", out, "--resume") == 0
    printed = capsys.readouterr().out
    assert "held-out digits, run A" in printed and "held-out digits, run B" in printed

    assert len(list((out / "data").glob("*.png"))) == 8 and len(list((out / "held_out").glob("*.png"))) == 8
    assert images.load_image(out / "data" / "digit_00000.png").shape == (16, 16, 3)
    sheet = images.load_image(out / "comparison.png")
    assert sheet.shape[0] == 3 * (64 + 4) + 4  # inputs, A, B: 16 px digits shown at 64 px
    assert images.load_image(out / "losses.png").shape[1] > 600
    numbers = json.loads((out / "losses.json").read_text())
    a, b = numbers["steps"]["A"], numbers["steps"]["B"]
    assert [entry["stage"] for entry in a] == [1, 1, 1, 1] and [entry["stage"] for entry in b] == [1, 1, 2, 2]
    for first, second in zip(a[:2], b[:2]):  # the same initialisation and data order
        assert first["total"] == pytest.approx(second["total"], rel=1e-5)
    assert set(numbers["held_out"]) == {"A", "B"} and numbers["stage1_steps"] == 2
    assert "scikit-learn" in numbers["data"]

    assert cli(*study_args(inputs, tiny16, out)) == 1
    assert "already holds a study" in capsys.readouterr().err


# ---- mistakes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--encoder", "vgg:relu9_9", "--steps", "1"], "'relu9_9' is not in"),
    (["--encoder", "vgg:relu4_1", "--steps", "1"], "upsamples at most 2 times"),
    (["--encoder", "relu3_1", "--steps", "1"], "--encoder takes vgg:LAYER"),
    (["--encoder", "vgg:relu3_1", "--stage1-steps", "-1", "--stage2-steps", "2"], "--stage1-steps must be 0"),
    (["--encoder", "vgg:relu3_1", "--stage1-steps", "0", "--stage2-steps", "0"], "nothing to train"),
    (["--stage2-steps", "2"], "give --encoder vgg:LAYER"),
    ([*STAGES, "--steps", "4"], "drop --steps"),
    ([*STAGES, "--epochs", "1"], "drop --epochs"),
    ([*STAGES, "--stage2-learning-rate", "0"], "--stage2-learning-rate must be positive"),
])
def test_bad_schedules_give_one_clear_error(inputs, tiny16, tmp_path, capsys, extra, message):
    assert cli(*train_args(inputs, tiny16, tmp_path / "model", *extra)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "model").exists()


@pytest.mark.parametrize("extra, message", [
    (["--stage2-steps", "0"], "needs both stages"),
    (["--digits", "0"], "--digits must be a positive number"),
    (["--digits", "5000"], "holds 1797 digits; the study needs 5008"),
    (["--encoder", "vgg:relu9_9"], "'relu9_9' is not in"),
    (["--mnist", "nowhere.npz"], "does not exist"),
    (["--image-size", "4"], "must be at least"),
])
def test_bad_study_options_give_one_clear_error(inputs, tiny16, tmp_path, capsys, extra, message):
    out = tmp_path / "study"
    assert cli(*study_args(inputs, tiny16, out), *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and not out.exists()
    assert cli("study-digits", "--out", out, "--resume") == 1
    assert "holds no study" in capsys.readouterr().err
