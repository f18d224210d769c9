"""fast_train.py through `fast_style.py train`, on the tiny data and network of conftest: the recipe,
training, checkpoints, resuming, Ctrl-C and two devices."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fast_apply
import fast_train
import images
import transformer
import vgg
from conftest import assert_exports_match, fast_style_cli as cli, smooth_image, stripes_image, train_args
from quiet_tf import tf

ROOT = Path(__file__).resolve().parents[1]


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


def test_a_checkpoint_of_keras_adam_resumes_with_its_moments(tiny16, tmp_path):
    """Model folders trained before adam.Adam hold Keras' Adam (the generator's and, with a VGG
    encoder, the shared layers'): resuming carries its moments and step count over, and the next
    step is the one Keras' Adam would have taken."""
    network = vgg.load(tiny16)
    settings = fast_train.Settings(style="", data="", network=str(tiny16), widths=(8, 8, 8), image_size=16,
                                    encoder="vgg:relu3_1", stage1_steps=0, stage2_steps=3).with_defaults(network)
    new = lambda: fast_train.Training(network, stripes_image(16, 16), settings, tf.distribute.get_strategy())
    old = new()
    crops = tf.constant(np.stack([smooth_image(16, 16, seed=i) for i in range(2)]))
    keras = [(tf.keras.optimizers.Adam(settings.learning_rate), old.generator_variables),
             (tf.keras.optimizers.Adam(settings.stage2_learning_rate), list(old.net.encoder_variables))]

    def keras_step():
        with tf.GradientTape() as tape:
            total = old.loss.total(old.loss.terms(crops, old.net(crops, training=True)))
        gradients = tape.gradient(total, [variables for _, variables in keras])
        for (optimizer, variables), gradient in zip(keras, gradients):
            optimizer.apply_gradients(zip(gradient, variables))

    for _ in range(2):
        keras_step()
    old.step.assign(2)
    layout = tf.train.Checkpoint(network=old.net, optimizer=keras[0][0], encoder_optimizer=keras[1][0],
                                 step=old.step, position=old.position)
    tf.train.CheckpointManager(layout, tmp_path, max_to_keep=3).save(checkpoint_number=2)

    resumed = new()
    fast_train.Checkpoints(resumed, tmp_path).restore_latest()
    assert int(resumed.step) == 2
    for ours, (theirs, _) in zip((resumed.optimizer, resumed.encoder_optimizer), keras):
        assert int(ours.iterations) == 2
        for mine, keras_m in zip(ours.m + ours.v, theirs._momentums + theirs._velocities):
            np.testing.assert_array_equal(mine.numpy(), keras_m.numpy())
    keras_step()
    resumed.train_step((crops, tf.constant([0, 1], tf.int64)), stage2=True)
    image = tf.constant(smooth_image(20, 20, seed=4)[np.newaxis])
    np.testing.assert_allclose(resumed.net(image).numpy(), old.net(image).numpy(), atol=0.01)


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


def test_devices_this_machine_lacks_are_refused_not_ignored():
    """Asked for a GPU it does not have, MirroredStrategy would train on the CPU without a word."""
    from errors import UserError
    with pytest.raises(UserError, match="--devices names gpu:3, which this machine does not have"):
        fast_train.choose_strategy(["/gpu:3", "/cpu:0"])
    assert fast_train.choose_strategy(["/cpu:0"]).num_replicas_in_sync == 1


def test_devices_may_be_given_by_tensorflows_full_local_names():
    """As tf.config.list_logical_devices prints them; another worker's devices are not this machine's."""
    import argparse
    import cli
    assert cli.device_list("/job:localhost/replica:0/task:0/device:CPU:0, gpu:1") == ["/cpu:0", "/gpu:1"]
    with pytest.raises(argparse.ArgumentTypeError, match="named once each"):
        cli.device_list("cpu:0,/job:localhost/replica:0/task:0/device:CPU:0")
    for other in ("/job:worker/replica:0/task:1/device:GPU:0", "/job:localhostgpu:0"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a device name"):
            cli.device_list(other)


def test_a_training_with_identity_start_is_rebuilt_as_one(inputs, tiny16, tmp_path):
    """training.json records it, so that the restored network and the export start from the input
    too: after one step at a negligible learning rate they still return it."""
    model = tmp_path / "model"
    assert cli(*train_args(inputs, tiny16, model, 1, "--identity-start", "--learning-rate", "1e-9")) == 0
    assert json.loads((model / "training.json").read_text())["identity_start"] is True
    image = smooth_image(24, 28, seed=5)[np.newaxis]
    np.testing.assert_allclose(fast_apply.restore_network(model)(tf.constant(image)).numpy(), image, atol=0.05)
    assert_exports_match(model, image)  # TFLite too: it has no atanh op
    assert fast_train.load_settings(model).identity_start and not fast_train.Settings("", "", "").identity_start
