"""The image transformation network of fast style transfer: its layers, variants and VGG encoder."""
import numpy as np
import pytest

import transformer
import vgg
from conftest import smooth_image
from quiet_tf import tf


@pytest.mark.parametrize("variant", ["improved", "paper"])
def test_network_keeps_any_size_and_outputs_0_to_255(variant):
    net = transformer.TransformNet((4, 4, 4), variant)
    for shape in [(1, 5, 5, 3), (2, 7, 9, 3), (1, 33, 20, 3)]:
        out = net(tf.random.uniform(shape, 0, 255, seed=1)).numpy()
        assert out.shape == shape
        assert out.min() >= 0 and out.max() <= 255


def test_instance_norm_stylizes_each_image_on_its_own():
    net = transformer.TransformNet((4, 4, 4))
    batch = tf.random.uniform([3, 16, 20, 3], 0, 255, seed=2)
    alone = net(batch[1:2]).numpy()
    np.testing.assert_allclose(net(batch).numpy()[1:2], alone, atol=1e-3)


def test_fast_layers_compute_the_textbook_operations():
    """ResizeConv = nearest x2, reflection pad, 3x3 conv; SpaceToDepthConv = reflection pad, 9x9 conv."""
    rng = np.random.default_rng(0)
    for height, width in [(6, 8), (5, 7)]:
        x = tf.constant(rng.uniform(-1, 1, (2, height, width, 4)).astype(np.float32))
        up = transformer.ResizeConv(4, 5, rng, "REFLECT")
        up.bias.assign(rng.uniform(-1, 1, 5).astype(np.float32))
        upsampled = tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)
        big = tf.pad(upsampled, [[0, 0], [1, 1], [1, 1], [0, 0]], "REFLECT")
        expected = tf.nn.conv2d(big, up.kernel, 1, "VALID") + up.bias
        np.testing.assert_allclose(up(x, [2 * height, 2 * width]), expected, atol=1e-5)
        out = transformer.SpaceToDepthConv(4, 3, 9, rng)
        out.bias.assign(rng.uniform(-1, 1, 3).astype(np.float32))
        padded = tf.pad(x, [[0, 0], [4, 4], [4, 4], [0, 0]], "REFLECT")
        np.testing.assert_allclose(out(x), tf.nn.conv2d(padded, out.kernel, 1, "VALID") + out.bias, atol=1e-5)


def test_the_encoder_is_the_loss_networks_first_layers(tiny16):
    """Initialised, it computes what vgg.VGG computes at relu3_1 (mean pixel, padding, pooling)."""
    network = vgg.load(tiny16)
    net = transformer.TransformNet((8, 8, 8), encoder="vgg:relu3_1", network=network)
    image = tf.constant(smooth_image(21, 18)[np.newaxis])
    features, sizes = net.encoder(image)
    expected = vgg.VGG(network, ["relu3_1"], pooling="max")(image)["relu3_1"]
    np.testing.assert_allclose(features.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert [list(size.numpy()) for size in sizes] == [[11, 9], [21, 18]]  # the decoder's targets
    assert len(net.encoder_variables) == 10  # conv1_1 … conv3_1, kernels and biases
    assert transformer.TransformNet((8, 8, 8)).encoder_variables == ()


@pytest.mark.parametrize("layer", ["relu1_2", "relu2_1", "pool2", "relu3_1"])
def test_the_output_has_the_inputs_size_after_any_usable_layer(tiny16, layer):
    net = transformer.TransformNet((4, 6, 8), encoder=f"vgg:{layer}", network=vgg.load(tiny16))
    for shape in [(1, 5, 5, 3), (2, 13, 10, 3)]:
        out = net(tf.random.uniform(shape, 0, 255, seed=1)).numpy()
        assert out.shape == shape and out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize("encoder", [None, "vgg:relu3_1"])
def test_identity_start_returns_the_input_until_trained(tiny16, encoder):
    """Its output layer starts at zero and the input is added in the tanh's argument; the layer still
    gets gradients, so training can move away from the identity. Glorot's start is far from it."""
    network = vgg.load(tiny16) if encoder else None
    image = tf.constant(np.concatenate([smooth_image(20, 24, seed=3)[np.newaxis],
                                        np.full((1, 20, 24, 3), [0, 255, 128], np.float32)]))
    net = transformer.TransformNet((4, 4, 4), encoder=encoder, network=network, identity_start=True)
    for training in (False, True):
        np.testing.assert_allclose(net(image, training=training).numpy(), image.numpy(), atol=0.01)
    with tf.GradientTape() as tape:
        change = tf.reduce_mean(tf.square(net(image, training=True) - 100.0))
    assert np.abs(tape.gradient(change, net.conv_out.kernel).numpy()).max() > 0
    noise = transformer.TransformNet((4, 4, 4), encoder=encoder, network=network)(image).numpy()
    assert np.abs(noise - image.numpy()).mean() > 20
