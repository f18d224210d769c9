"""The image transformation network of Johnson, Alahi & Fei-Fei (2016), "Perceptual Losses for
Real-Time Style Transfer and Super-Resolution", for fast (feed-forward) style transfer.

    9x9 conv 32 - 3x3 conv 64 stride 2 - 3x3 conv 128 stride 2 - 5 residual blocks of 128
    - upsample to 64 - upsample to 32 - 9x9 conv 3 - 127.5 + 150 tanh, clipped to 0..255

`VARIANTS` is the one place that chooses between the paper's layers and the improvements every
maintained implementation adopted (instance normalisation, resize-then-convolve upsampling,
reflection padding). Images are [batch, height, width, 3] float32 RGB in 0..255; the output has the
input's size for any size (the upsampling targets the encoder's own map sizes).

With `identity_start` the network starts as the identity: the input joins the output layer's result
in the tanh's argument, and that layer starts at zero, so training learns a change of the input.

With `encoder="vgg:relu3_1"` the encoder is instead a trainable copy of the loss network's first
layers (conv1_1 … relu3_1, initialised from the `.mat`), bridged into the same residual blocks and
decoder: the generator of the two-stage schedule, whose first stage keeps these shared layers fixed.
"""
from dataclasses import dataclass

import numpy as np

from errors import UserError
from quiet_tf import tf
from vgg import VGG

JOHNSON_WIDTHS = (32, 64, 128)
RESIDUAL_BLOCKS = 5
EPSILON = 1e-5  # of the normalisations, as PyTorch's


@dataclass(frozen=True)
class Variant:
    normalization: str  # "instance" (Ulyanov et al. 2016) or "batch" (the paper)
    upsampling: str  # "resize": nearest-neighbour x2, then a 3x3 conv; "transpose": stride-2 transposed conv
    padding: str  # tf.pad mode of every convolution: "REFLECT", or "CONSTANT" (zeros)


VARIANTS = {
    # The improvements: instance norm makes the result independent of the batch and of contrast;
    # resize-convolution has no checkerboard artefacts (Odena et al. 2016); reflection padding no
    # dark border.
    "improved": Variant("instance", "resize", "REFLECT"),
    # The paper's layers. It padded the input by 40 px (reflection) and left the residual convolutions
    # unpadded; zero padding of every convolution (as lengstrom/fast-style-transfer) keeps the output
    # the input's size at any size instead.
    "paper": Variant("batch", "transpose", "CONSTANT"),
}

# Reflection padding needs every map larger than its padding: 5 px at the input (9x9 kernels) leave
# 2 px at a quarter of the size, the least a 3x3 reflection-padded convolution takes.
MIN_SIZE = 5
ENCODER_PREFIX = "vgg:"
# The decoder has a width for each of full, half and quarter size, so it can undo two poolings.
MAX_POOLINGS = 2


def _kernel(rng, shape):
    """A convolution kernel variable, Glorot-uniform from `rng` (so a seed makes a run repeatable)."""
    fan_in, fan_out = np.prod(shape[:-1]), np.prod(shape[:-2]) * shape[-1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return tf.Variable(rng.uniform(-limit, limit, shape).astype(np.float32), name="kernel")


class Conv(tf.Module):
    """A convolution that pads by half its kernel first, so stride 1 keeps the size."""

    def __init__(self, in_channels, out_channels, size, rng, stride=1, padding="REFLECT", name=None):
        super().__init__(name=name)
        self.stride, self.padding, self.pad = stride, padding, size // 2
        self.kernel = _kernel(rng, [size, size, in_channels, out_channels])
        self.bias = tf.Variable(tf.zeros([out_channels]), name="bias")

    def __call__(self, x):
        pad = self.pad
        x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=self.padding)
        x = tf.nn.conv2d(x, tf.cast(self.kernel, x.dtype), self.stride, padding="VALID")
        return tf.nn.bias_add(x, tf.cast(self.bias, x.dtype))


def _space_to_depth_rows(size):
    """rows[p, s, a, u] = 1 where kernel row u takes output row 2i+a from input row 2(i+p)+s."""
    rows = np.zeros((size // 2 + 1, 2, 2, size), np.float32)
    for a in range(2):
        for u in range(size):
            rows[(a + u) // 2, (a + u) % 2, a, u] = 1
    return rows


class SpaceToDepthConv(Conv):
    """A stride-1 convolution computed on the 2x2 space-to-depth map: the same result, twice as fast
    for the output layer. oneDNN runs a convolution to 3 channels at a fifth of its usual speed; on
    [H/2, W/2, 4C] to 12 channels (one per output phase) with a merged kernel it runs at full speed.
    """

    def __call__(self, x):
        size, in_channels, out_channels = self.kernel.shape[0], self.kernel.shape[2], self.kernel.shape[3]
        rows, taps = _space_to_depth_rows(size), size // 2 + 1
        merged = tf.einsum("psau,qtbv,uvio->pqstiabo", rows, rows, self.kernel)
        merged = tf.reshape(merged, [taps, taps, 4 * in_channels, 4 * out_channels])
        height, width, pad = tf.shape(x)[1], tf.shape(x)[2], self.pad
        x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=self.padding)
        x = tf.pad(x, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]])  # even sides; cropped below
        x = tf.reshape(x, [-1, tf.shape(x)[1], tf.shape(x)[2], in_channels])  # TFLite: channels known
        x = tf.nn.conv2d(tf.nn.space_to_depth(x, 2), tf.cast(merged, x.dtype), 1, padding="VALID")
        x = tf.nn.depth_to_space(tf.nn.bias_add(x, tf.cast(tf.tile(self.bias, [4]), x.dtype)), 2)
        return x[:, :height, :width, :]


class TransposedConv(tf.Module):
    """The paper's upsampling: a 3x3 convolution with stride 1/2, to exactly `size`."""

    def __init__(self, in_channels, out_channels, rng, name=None):
        super().__init__(name=name)
        self.kernel = _kernel(rng, [3, 3, out_channels, in_channels])
        self.bias = tf.Variable(tf.zeros([out_channels]), name="bias")

    def __call__(self, x, size):
        shape = tf.concat([tf.shape(x)[:1], size, tf.shape(self.kernel)[2:3]], axis=0)
        x = tf.nn.conv2d_transpose(x, tf.cast(self.kernel, x.dtype), shape, strides=2, padding="SAME")
        return tf.nn.bias_add(x, tf.cast(self.bias, x.dtype))


class ResizeConv(tf.Module):
    """Nearest-neighbour upsampling x2, then a 3x3 convolution: no checkerboard artefacts.

    Computed on the small map, at about half the cost: after the upsampling, output row 2i+a
    sees only two input rows, and each kernel row (and column) falls on one of them (`PHASES`). So each
    of the four output phases is a 2x2 convolution of the small map with merged kernel taps, and
    depth_to_space interleaves them. Reflection padding of the upsampled map is symmetric padding of
    the small one. The result is cropped to `size`, the encoder's map size, which may be odd.
    """
    # PHASES[a, tap, kernel row]: output row 2i (a = 0) takes kernel row 0 from input row i-1 (tap 0)
    # and rows 1, 2 from row i (tap 1); output row 2i+1 takes rows 0, 1 from row i, row 2 from i+1.
    PHASES = np.array([[[1, 0, 0], [0, 1, 1]],
                       [[1, 1, 0], [0, 0, 1]]], np.float32)

    def __init__(self, in_channels, out_channels, rng, padding, name=None):
        super().__init__(name=name)
        self.padding = "SYMMETRIC" if padding == "REFLECT" else padding
        self.kernel = _kernel(rng, [3, 3, in_channels, out_channels])
        self.bias = tf.Variable(tf.zeros([out_channels]), name="bias")

    def __call__(self, x, size):
        merged = tf.cast(tf.einsum("aym,bxn,mnio->abyxio", self.PHASES, self.PHASES, self.kernel), x.dtype)
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode=self.padding)
        # Phase (a, b) reads padded rows from a (input rows i-1+a, i+a) and columns from b.
        phases = [tf.nn.conv2d(x[:, a:a + height + 1, b:b + width + 1, :], merged[a, b], 1, padding="VALID")
                  for a in (0, 1) for b in (0, 1)]
        x = tf.nn.bias_add(tf.concat(phases, axis=3), tf.cast(tf.tile(self.bias, [4]), x.dtype))
        x = tf.nn.depth_to_space(x, 2)
        return x[:, :size[0], :size[1], :]


class InstanceNorm(tf.Module):
    """Per image and channel over the positions (Ulyanov et al. 2016).

    Computed by the fused batch-norm kernel on the batch folded into the channels, [1, H, W, B*C]:
    batch normalisation of a single image is instance normalisation, and the fused kernel is twice as
    fast as tf.nn.moments. It keeps its statistics in float32 for bfloat16 inputs.
    """

    def __init__(self, channels, name=None):
        super().__init__(name=name)
        self.scale = tf.Variable(tf.ones([channels]), name="scale")
        self.offset = tf.Variable(tf.zeros([channels]), name="offset")

    def __call__(self, x, training):
        shape = tf.shape(x)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, height, width, batch * channels])
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(folded, tf.tile(self.scale, [batch]),
                                                   tf.tile(self.offset, [batch]), epsilon=EPSILON,
                                                   is_training=True)
        return tf.transpose(tf.reshape(y, [height, width, batch, channels]), [2, 0, 1, 3])


class BatchNorm(tf.Module):
    """The paper's batch normalisation: batch statistics in training, moving averages afterwards."""

    def __init__(self, channels, momentum=0.9, name=None):
        super().__init__(name=name)
        self.momentum = momentum
        self.scale = tf.Variable(tf.ones([channels]), name="scale")
        self.offset = tf.Variable(tf.zeros([channels]), name="offset")
        # Each replica keeps its own averages; reading them (a checkpoint, the export) takes the mean.
        local = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                     aggregation=tf.VariableAggregation.MEAN)
        self.moving_mean = tf.Variable(tf.zeros([channels]), name="moving_mean", **local)
        self.moving_variance = tf.Variable(tf.ones([channels]), name="moving_variance", **local)

    def __call__(self, x, training):
        if not training:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.scale, self.offset, self.moving_mean, self.moving_variance, epsilon=EPSILON,
                is_training=False)
            return y
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, self.scale, self.offset,
                                                             epsilon=EPSILON, is_training=True)
        self.moving_mean.assign(self.momentum * self.moving_mean + (1 - self.momentum) * mean)
        self.moving_variance.assign(self.momentum * self.moving_variance + (1 - self.momentum) * variance)
        return y


def _norm(variant, channels, name):
    return (InstanceNorm if variant.normalization == "instance" else BatchNorm)(channels, name=name)


class ResidualBlock(tf.Module):
    """conv-norm-ReLU-conv-norm plus the input (He et al. 2016, as the paper's supplement)."""

    def __init__(self, channels, variant, rng, name=None):
        super().__init__(name=name)
        self.conv1 = Conv(channels, channels, 3, rng, padding=variant.padding)
        self.norm1 = _norm(variant, channels, "norm1")
        self.conv2 = Conv(channels, channels, 3, rng, padding=variant.padding)
        self.norm2 = _norm(variant, channels, "norm2")

    def __call__(self, x, training):
        y = tf.nn.relu(self.norm1(self.conv1(x), training))
        return x + self.norm2(self.conv2(y), training)


def encoder_layers(network, spec):
    """The layers of the `.mat` that `--encoder vgg:LAYER` copies (conv1_1 … LAYER), and how many
    poolings they hold; a UserError for a spec or layer the decoder cannot undo."""
    if not spec.startswith(ENCODER_PREFIX):
        raise UserError(f"--encoder takes {ENCODER_PREFIX}LAYER, e.g. {ENCODER_PREFIX}relu3_1, not '{spec}'")
    layer = spec[len(ENCODER_PREFIX):]
    try:
        layers = network.layers[:network.index(layer) + 1]
    except UserError as error:
        raise UserError(f"--encoder {spec}: {error}") from None
    poolings = sum(layer.type == "pool" for layer in layers)
    if poolings > MAX_POOLINGS:
        raise UserError(f"--encoder {spec} ends after {poolings} poolings, at 1/{2 ** poolings} of the image "
                        f"size; the generator's decoder upsamples at most {MAX_POOLINGS} times: use a layer "
                        f"up to the third block, e.g. {ENCODER_PREFIX}relu3_1")
    if not any(layer.type == "conv" for layer in layers):
        raise UserError(f"--encoder {spec} holds no convolution; use a layer such as "
                        f"{ENCODER_PREFIX}relu3_1")
    return layers, poolings


def min_size(network=None, encoder=None):
    """The least image side the generator takes: MIN_SIZE (its 9x9 convolutions, and Johnson's encoder);
    with a VGG encoder also 2 px (what a reflection-padded 3x3 convolution needs) after its poolings."""
    return MIN_SIZE if encoder is None else max(MIN_SIZE, 2 * 2 ** encoder_layers(network, encoder)[1])


class VGGEncoder(tf.Module):
    """The generator's copy of the loss network's layers conv1_1 … LAYER, as trainable variables
    initialised from the `.mat`. Its own copy, so that training it leaves the loss network, and
    with it the meaning of the losses, unchanged. Computes in float32."""

    def __init__(self, network, spec, name="encoder"):
        super().__init__(name=name)
        layers, self.poolings = encoder_layers(network, spec)
        convs = [layer for layer in layers if layer.type == "conv"]
        self.kernels = {layer.name: tf.Variable(layer.kernel, name=f"{layer.name}_kernel") for layer in convs}
        self.biases = {layer.name: tf.Variable(layer.bias, name=f"{layer.name}_bias") for layer in convs}
        self.channels = convs[-1].kernel.shape[3]
        self.output = layers[-1].name
        # The map before each pooling but the first: the sizes the decoder restores (the first is the
        # image's own).
        pools = [i for i, layer in enumerate(layers) if layer.type == "pool"]
        self.before_pools = [layers[i - 1].name for i in pools[1:]]
        weights = {name: (self.kernels[name], self.biases[name]) for name in self.kernels}
        # vgg.VGG's mean pixel, padding and blocks, with the loss network's (max) pooling
        self.vgg = VGG(network, self.before_pools + [self.output], pooling="max", weights=weights)

    def __call__(self, images):
        """The features of `images` (RGB 0..255) and the sizes to upsample to, deepest first."""
        features = self.vgg(images)
        sizes = [tf.shape(images)[1:3]] + [tf.shape(features[name])[1:3] for name in self.before_pools]
        return features[self.output], sizes[::-1]


class TransformNet(tf.Module):
    """The image transformation network. `widths` are the channels of the three resolutions
    (Johnson's 32, 64, 128; tests use a few); `dtype` is the arithmetic of the convolutions; `seed`
    draws the initial weights. `encoder` "vgg:LAYER" replaces Johnson's encoder by VGGEncoder (from
    `network`, a vgg.Network) and a bridge (3x3 conv, norm, ReLU) to the residual width: the width
    of the encoder's resolution (quarter size for relu3_1, half for relu2_1).

    `identity_start`: the untrained network returns its input (see the module docstring). Its
    Glorot-initialised output layer instead starts as noise over the whole 0..255 range, whose Gram
    matrices are tens of times the painting's; the steps that lower the style term fastest then drive
    the tanh into saturation, one flat white image where gradients vanish for hundreds of steps."""

    def __init__(self, widths=JOHNSON_WIDTHS, variant="improved", residual_blocks=RESIDUAL_BLOCKS,
                 dtype=tf.float32, seed=0, name="transform_net", encoder=None, network=None,
                 identity_start=False):
        super().__init__(name=name)
        self.dtype, self.identity_start = tf.as_dtype(dtype), identity_start
        v, rng = VARIANTS[variant], np.random.default_rng(seed)
        c1, c2, c3 = widths
        if encoder is None:
            self.encoder, self.depth = None, 2  # poolings to undo
            self.conv1, self.norm1 = Conv(3, c1, 9, rng, padding=v.padding), _norm(v, c1, "norm1")
            self.down1 = Conv(c1, c2, 3, rng, stride=2, padding=v.padding)
            self.norm2 = _norm(v, c2, "norm2")
            self.down2 = Conv(c2, c3, 3, rng, stride=2, padding=v.padding)
            self.norm3 = _norm(v, c3, "norm3")
        else:
            self.encoder = VGGEncoder(network, encoder)
            self.depth = self.encoder.poolings
            self.bridge = Conv(self.encoder.channels, widths[self.depth], 3, rng, padding=v.padding)
            self.norm_bridge = _norm(v, widths[self.depth], "norm_bridge")
        width = widths[self.depth]
        self.residuals = [ResidualBlock(width, v, rng, name=f"residual{i + 1}") for i in range(residual_blocks)]
        up = (lambda a, b: ResizeConv(a, b, rng, v.padding)) if v.upsampling == "resize" else (
            lambda a, b: TransposedConv(a, b, rng))
        if self.depth == 2:
            self.up1, self.norm4 = up(c3, c2), _norm(v, c2, "norm4")
        if self.depth >= 1:
            self.up2, self.norm5 = up(c2, c1), _norm(v, c1, "norm5")
        self.conv_out = SpaceToDepthConv(c1, 3, 9, rng, padding=v.padding)
        if identity_start:
            self.conv_out.kernel.assign(tf.zeros_like(self.conv_out.kernel))

    @property
    def encoder_variables(self):
        """The layers shared with the loss network (none for Johnson's encoder): fixed in stage 1."""
        return self.encoder.trainable_variables if self.encoder else ()

    def _upsampling(self):
        """(upsampling, norm) from the deepest resolution the encoder reaches to full size."""
        stages = [(self.up1, self.norm4)] if self.depth == 2 else []
        return stages + ([(self.up2, self.norm5)] if self.depth >= 1 else [])

    def __call__(self, images, training=False):
        if self.encoder is None:
            x = tf.cast(images / 127.5 - 1.0, self.dtype)
            full = tf.shape(x)[1:3]
            x = tf.nn.relu(self.norm1(self.conv1(x), training))
            x = tf.nn.relu(self.norm2(self.down1(x), training))
            sizes = [tf.shape(x)[1:3], full]
            x = tf.nn.relu(self.norm3(self.down2(x), training))
        else:
            x, sizes = self.encoder(images)
            x = tf.nn.relu(self.norm_bridge(self.bridge(tf.cast(x, self.dtype)), training))
        for block in self.residuals:
            x = block(x, training)
        for (up, norm), size in zip(self._upsampling(), sizes):
            x = tf.nn.relu(norm(up(x, size), training))
        # The scaled tanh of jcjohnson's and lengstrom's code: it reaches 0 and 255 before it saturates,
        # so a black or white region still has gradients (127.5 * (1 + tanh) traps them at 0).
        x = tf.cast(self.conv_out(x), tf.float32)
        if self.identity_start:  # the input, as the tanh's argument that gives it back
            y = (tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0) - 127.5) / 150.0
            x += 0.5 * tf.math.log((1.0 + y) / (1.0 - y))  # atanh(y), which TFLite lacks
        stylized = 127.5 + 150.0 * tf.tanh(x)
        return stylized if training else tf.clip_by_value(stylized, 0.0, 255.0)
