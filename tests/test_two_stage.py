"""The two-stage schedule of fast_style.py (a generator whose encoder is a copy of VGG's first layers),
on conftest's tiny data: a VGG16-shaped .mat with a few channels, 16 px crops, a network
of 8 channels, 2 steps per stage."""
import json

import numpy as np
import pytest

import fast_train
import progress
import transformer
import vgg
from conftest import assert_exports_match, fast_style_cli as cli, smooth_image, stop_after, stripes_image
from errors import UserError
from quiet_tf import tf

TINY = ["--widths", "8,8,8", "--image-size", "16", "--batch-size", "2"]
STAGES = ["--encoder", "vgg:relu3_1", "--stage1-steps", "2", "--stage2-steps", "2"]


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
    assert_exports_match(straight, smooth_image(19, 26, seed=3)[np.newaxis])


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


@pytest.mark.parametrize("encoder, smallest", [(None, transformer.MIN_SIZE), ("vgg:relu3_1", 8), ("vgg:relu2_1", transformer.MIN_SIZE)])
def test_training_crops_smaller_than_the_generator_takes_are_one_clear_error(tiny16, encoder, smallest):
    """Shallow style layers let the loss network take crops that the generator's deepest padded
    convolution cannot: the generator's own minimum is checked before TensorFlow meets it."""
    network = vgg.load(tiny16)
    settings = fast_train.Settings(style="", data="", network=str(tiny16), image_size=smallest, encoder=encoder,
                                   style_layers={"relu1_1": 1.0}).with_defaults(network)
    settings.check(network)
    for size in (smallest - 1, 1):
        image = fast_train.Settings(**{**settings.__dict__, "image_size": size})
        with pytest.raises(UserError, match=f"--image-size must be at least {smallest} for the generator"):
            image.check(network)
    net = transformer.TransformNet((4, 4, 4), encoder=encoder, network=network)
    assert net(tf.zeros([1, smallest, smallest, 3])).shape == (1, smallest, smallest, 3)
