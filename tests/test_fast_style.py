"""fast_style.py on tiny data made here: a few generated images, a tiny VGG16-shaped .mat, a network
of 8 channels, 32 px crops. Training, resuming, export, stylizing images, folders and videos, errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

import fast_style
import fast_apply
import fast_train
import images
import transformer
import vgg
from conftest import smooth_image, stripes_image
from quiet_tf import tf

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--widths", "8,8,8", "--image-size", "32", "--batch-size", "4"]


def cli(*args):
    return fast_style.main([str(a) for a in args])


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """A data folder (five images, one in a subfolder, one unreadable file) and a style image."""
    root = tmp_path_factory.mktemp("inputs")
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    for i in range(4):
        images.save_image(data / f"photo{i}.png", smooth_image(40 + 4 * i, 48, seed=i))
    images.save_image(data / "sub" / "deep.jpg", smooth_image(36, 52, seed=7))
    (data / "broken.jpg").write_text("not an image")
    style = images.save_image(root / "style.png", stripes_image(48, 48))
    return data, style


def train_args(inputs, network, model, steps, *extra):
    data, style = inputs
    return ["train", "--style", style, "--data", data, "--network", network, "--model", model,
            "--steps", steps, *TINY, *extra]


@pytest.fixture(scope="session")
def trained(inputs, tiny16, tmp_path_factory):
    """A model folder after 4 steps (checkpoints every 2), exported."""
    model = tmp_path_factory.mktemp("trained") / "model"
    assert cli(*train_args(inputs, tiny16, model, 4, "--checkpoint-every", 2, "--preview-every", 2)) == 0
    return model


@pytest.fixture
def no_export(monkeypatch):
    """Training without the final export (SavedModel and TFLite), for tests that only look at the
    checkpoints: the conversion takes seconds."""
    monkeypatch.setattr(fast_apply, "export", lambda model_dir: None)


def checkpoint_values(model):
    """{variable name: value} of the latest checkpoint's network."""
    latest = tf.train.latest_checkpoint(model / "checkpoints")
    return {name: tf.train.load_variable(latest, name) for name, _ in tf.train.list_variables(latest)
            if name.startswith("network/")}


# ---- the recipe ---------------------------------------------------------------------------------

def test_default_recipe_follows_the_network(tiny16, tiny_network):
    """VGG16: the paper's layers with jcjohnson's weights; VGG19: lengstrom's. Style layers are
    weighted 1/C^2 (the tiny networks have 4 and 8 channels where VGG has 64 ... 512)."""
    settings = fast_train.Settings(style="s", data="d", network="n")
    paper = settings.with_defaults(vgg.load(tiny16))
    assert paper.content_layers == {"relu2_2": 1.0}
    assert paper.style_layers == {"relu1_2": 1 / 16, "relu2_2": 1 / 16, "relu3_3": 1 / 64, "relu4_3": 1 / 64}
    assert (paper.content_weight, paper.style_weight, paper.tv_weight, paper.pixel_weight) == (1, 5, 0.4, 0)
    lengstrom = settings.with_defaults(tiny_network)  # VGG19: it has conv5_4
    assert list(lengstrom.content_layers) == ["relu4_2"]
    assert list(lengstrom.style_layers) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert (lengstrom.content_weight, lengstrom.style_weight, lengstrom.tv_weight) == (7.5, 100, 200)
    assert paper.style_size == paper.image_size == 256
    mine = fast_train.Settings(style="s", data="d", network="n", style_weight=0.0, image_size=128)
    mine = mine.with_defaults(tiny_network)
    assert mine.style_weight == 0 and mine.style_size == 128


# ---- training -----------------------------------------------------------------------------------

def test_a_few_steps_reduce_the_loss(tiny16):
    network = vgg.load(tiny16)
    settings = fast_train.Settings(style="", data="", network=str(tiny16), widths=(8, 8, 8),
                                    image_size=32).with_defaults(network)
    training = fast_train.Training(network, stripes_image(32, 32), settings, tf.distribute.get_strategy())
    crops = np.stack([smooth_image(32, 32, seed=i) for i in range(2)])
    batch = (tf.constant(crops), tf.constant([0, 1], tf.int64))
    losses = [float(training.train_step(batch)[1]) for _ in range(5)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_training_writes_checkpoints_previews_and_the_export(trained, inputs):
    settings = json.loads((trained / "training.json").read_text())
    assert settings["widths"] == [8, 8, 8] and settings["data"] == str(inputs[0].resolve())
    assert settings["content_layers"] == {"relu2_2": 1.0}
    assert tf.train.latest_checkpoint(trained / "checkpoints").endswith("ckpt-4")
    assert sorted(p.name for p in (trained / "previews").iterdir()) == ["step_000002.jpg", "step_000004.jpg"]
    preview = images.load_image(trained / "previews" / "step_000002.jpg")
    assert preview.shape == (64, 3 * 32, 3)  # three fixed images above their stylizations
    assert (trained / "saved_model" / "saved_model.pb").is_file() and (trained / "model.tflite").is_file()


def test_training_draws_its_losses(trained):
    from PIL import Image
    with Image.open(trained / fast_train.LOSS_PLOT) as picture:
        assert picture.format == "PNG"


def test_a_resumed_training_continues_where_it_stopped(trained, inputs, tiny16, tmp_path, capsys, no_export):
    """2 steps, then --resume to 4: the same step, data and weights as 4 steps at once."""
    model = tmp_path / "model"
    assert cli(*train_args(inputs, tiny16, model, 2)) == 0
    assert "skipped 1 unreadable image files" in capsys.readouterr().err  # broken.jpg
    assert cli("train", "--model", model, "--resume", "--steps", 4) == 0
    assert tf.train.latest_checkpoint(model / "checkpoints").endswith("ckpt-4")
    resumed, straight = checkpoint_values(model), checkpoint_values(trained)
    assert resumed.keys() == straight.keys()
    for name in straight:
        np.testing.assert_allclose(resumed[name], straight[name], atol=1e-5, err_msg=name)


def test_a_model_folder_holds_one_training(trained, inputs, tiny16, capsys):
    assert cli(*train_args(inputs, tiny16, trained, 1)) == 1
    assert "--resume to continue it, --overwrite to start over" in capsys.readouterr().err
    assert cli("train", "--model", trained, "--resume", "--image-size", 64) == 1
    assert "--image-size 32, not 64" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_to_resume_from(inputs, tiny16, tmp_path):
    model = tmp_path / "model"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "fast_style.py"), *map(str, train_args(inputs, tiny16, model, 100000,
                                                                          "--preview-every", 1))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 120
    while time.time() < deadline and not list((model / "previews").glob("step_000002.jpg")):
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    step = int(tf.train.latest_checkpoint(model / "checkpoints").rsplit("-", 1)[1])
    assert step >= 2 and f"step {step} is saved" in err


@pytest.mark.slow
def test_two_devices_train_as_one(trained, inputs, tiny16, tmp_path):
    """MirroredStrategy over two logical CPUs computes the same steps as one device."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from quiet_tf import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import fast_style, fast_apply
fast_apply.export = lambda model_dir: None  # the test compares checkpoints
args = {[str(a) for a in train_args(inputs, tiny16, tmp_path / "two", 2, "--devices", "/cpu:0,/cpu:1")]!r}
sys.exit(fast_style.main(args))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    one = transformer.TransformNet((8, 8, 8))
    tf.train.Checkpoint(network=one).restore(str(trained / "checkpoints" / "ckpt-2")).expect_partial()
    two = fast_apply.restore_network(tmp_path / "two")
    # Compared by their stylizations: the biases before a normalisation get gradients of rounding
    # noise, which Adam's first steps turn into +-learning rate either way; they change no output.
    image = tf.constant(smooth_image(40, 40, seed=4)[np.newaxis])
    np.testing.assert_allclose(two(image).numpy(), one(image).numpy(), atol=0.5)
    assert np.abs(one(image).numpy() - transformer.TransformNet((8, 8, 8))(image).numpy()).max() > 5


# ---- export -------------------------------------------------------------------------------------

def test_export_round_trips_to_the_same_output(trained):
    image = smooth_image(24, 36, seed=3)[np.newaxis]
    net = fast_apply.restore_network(trained)
    expected = net(tf.constant(image)).numpy()
    served = tf.saved_model.load(str(trained / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(image))["stylized"].numpy(), expected, atol=0.01)
    interpreter = tf.lite.Interpreter(str(trained / "model.tflite"))
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], image.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], image)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]),
                               expected, atol=0.05)  # of 0..255


def test_export_command_rewrites_the_export(trained, capsys):
    before = (trained / "model.tflite").stat().st_mtime_ns
    assert cli("export", "--model", trained) == 0
    assert (trained / "model.tflite").stat().st_mtime_ns > before
    assert "exported" in capsys.readouterr().out


# ---- stylizing ----------------------------------------------------------------------------------

def test_stylize_an_image_keeps_its_size(trained, tmp_path, capsys):
    source = images.save_image(tmp_path / "in.jpg", smooth_image(27, 45, seed=5))
    out = tmp_path / "out.png"
    assert cli("stylize", "--model", trained, "--input", source, "--output", out) == 0
    assert images.load_image(out).shape == (27, 45, 3)
    assert cli("stylize", "--model", trained, "--input", source, "--output", out) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli("stylize", "--model", trained / "saved_model", "--input", source, "--output", out,
               "--overwrite", "--preserve-colors") == 0
    kept = images.rgb_to_yiq(images.load_image(out))[..., 1:]
    original = images.rgb_to_yiq(images.load_image(source))[..., 1:]
    assert np.abs(kept - original).mean() < 3  # the input's colours (I, Q), up to rounding and clipping


def test_stylize_a_folder_mirrors_it(trained, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("stylize", "--model", trained, "--input", inputs[0], "--output", out, "--batch-size", 3) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["photo0.png", "photo1.png", "photo2.png", "photo3.png", "sub/deep.jpg"]
    assert images.load_image(out / "photo2.png").shape == (48, 48, 3)
    captured = capsys.readouterr()
    assert "stylized 5 images" in captured.out and "broken.jpg" in captured.err
    assert cli("stylize", "--model", trained, "--input", inputs[0], "--output", out) == 1
    assert "5 of the outputs already exist" in capsys.readouterr().err


def write_video(path, frames, fps, audio=None):
    import imageio_ffmpeg
    writer = imageio_ffmpeg.write_frames(str(path), frames.shape[2:0:-1], fps=fps, macro_block_size=1,
                                         audio_path=audio and str(audio),
                                         output_params=["-loglevel", "error"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame.astype(np.uint8)))
    writer.close()


def read_video(path):
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, [np.frombuffer(f, np.uint8) for f in reader]


@pytest.mark.parametrize("with_sound", [False, True])
def test_a_video_round_trips_with_its_frame_rate_and_sound(trained, tmp_path, with_sound):
    sound = None
    if with_sound:
        sound = tmp_path / "tone.wav"
        with wave.open(str(sound), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes((np.sin(np.arange(4000) * 0.3) * 8000).astype(np.int16).tobytes())
    source, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(source, np.stack([smooth_image(32, 48, seed=i) for i in range(5)]), fps=12, audio=sound)
    assert cli("stylize", "--model", trained, "--input", source, "--output", out, "--batch-size", 2) == 0
    meta, frames = read_video(out)
    assert len(frames) == 5 and meta["size"] == (48, 32) and meta["fps"] == 12
    assert ("audio_codec" in meta) == with_sound
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_stylize_in_bfloat16_rebuilds_the_network_from_its_checkpoint(trained, tmp_path):
    photo = images.save_image(tmp_path / "photo.png", smooth_image(40, 52, seed=5))
    outputs = {}
    for precision in ("float32", "bfloat16"):
        outputs[precision] = tmp_path / f"{precision}.png"
        assert cli("stylize", "--model", trained, "--input", photo, "--output", outputs[precision],
                   "--precision", precision) == 0
    assert fast_apply.Stylizer(trained, "bfloat16").precision == "bfloat16"
    exported, reduced = (images.load_image(outputs[p]) for p in ("float32", "bfloat16"))
    difference = np.abs(exported - reduced)
    assert 0 < difference.max() and difference.mean() < 3.0  # rounding, not another network


def test_a_bare_saved_model_runs_in_float32_only(trained, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(Path(trained) / fast_train.SAVED_MODEL, bare)
    assert fast_apply.Stylizer(bare, "auto").precision == "float32"
    photo = images.save_image(tmp_path / "photo.png", smooth_image(40, 52))
    assert cli("stylize", "--model", bare, "--input", photo, "--output", tmp_path / "out.png",
               "--precision", "bfloat16") == 1
    assert "--precision bfloat16 rebuilds the network from the checkpoints" in capsys.readouterr().err


def test_an_image_too_large_for_memory_is_stylized_smaller(trained, monkeypatch):
    stylizer = fast_apply.Stylizer(trained)
    run = stylizer.run

    def limited(images):
        if images.shape[1] * images.shape[2] > 600:
            raise tf.errors.ResourceExhaustedError(None, None, "out of memory")
        return run(images)

    monkeypatch.setattr(stylizer, "run", limited)
    result = stylizer(np.stack([smooth_image(40, 60, seed=i) for i in range(2)]))
    assert result.shape == (2, 40, 60, 3) and stylizer.reduced


# ---- mistakes -----------------------------------------------------------------------------------

def empty_folder(root):
    (root / "empty").mkdir()
    return root / "empty"


def only_unreadable(root):
    (root / "bad").mkdir()
    (root / "bad" / "a.jpg").write_text("no")
    (root / "bad" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root / "bad"


@pytest.mark.parametrize("make_data, message", [
    (empty_folder, "holds no images"),
    (only_unreadable, "none of the 2 image files in the data folder could be read"),
    (lambda root: root / "missing", "does not exist"),
])
def test_bad_data_folders_give_one_clear_error(inputs, tiny16, tmp_path, capsys, make_data, message):
    data = make_data(tmp_path)
    args = train_args(inputs, tiny16, tmp_path / "model", 1)
    args[args.index("--data") + 1] = data
    assert cli(*args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size must be a positive number"),
    (["--widths", "8,8"], "--widths takes three"),
    (["--style-layers", "relu9_9"], "'relu9_9' is not in"),
    (["--style", "missing.png"], "style image"),
])
def test_bad_training_options_give_one_clear_error(inputs, tiny16, tmp_path, capsys, extra, message):
    assert cli(*train_args(inputs, tiny16, tmp_path / "model", 1), *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bad_stylize_inputs_give_one_clear_error(trained, tmp_path, capsys):
    image = images.save_image(tmp_path / "in.png", smooth_image(20, 20))
    tiny = images.save_image(tmp_path / "tiny.png", smooth_image(3, 20))
    (tmp_path / "video.mp4").write_text("not a video")
    cases = [
        (tmp_path / "nowhere", image, tmp_path / "o.png", "does not exist"),
        (tmp_path, image, tmp_path / "o.png", "holds no exported network"),
        (trained, tmp_path / "missing.png", tmp_path / "o.png", "input"),
        (trained, tiny, tmp_path / "o.png", "needs at least 5 px"),
        (trained, image, tmp_path / "o.gifv", "unsupported extension"),
        (trained, tmp_path / "video.mp4", tmp_path / "o.mp4", "cannot be read"),
    ]
    for model, source, output, message in cases:
        assert cli("stylize", "--model", model, "--input", source, "--output", output) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (message, err)


def test_export_without_a_training_says_so(tmp_path, capsys):
    assert cli("export", "--model", tmp_path) == 1
    assert "holds no training" in capsys.readouterr().err
