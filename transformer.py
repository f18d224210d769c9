"""The image transformation network of Johnson, Alahi & Fei-Fei (2016), "Perceptual Losses for
Real-Time Style Transfer and Super-Resolution", for fast (feed-forward) style transfer.

    9x9 conv 32 - 3x3 conv 64 stride 2 - 3x3 conv 128 stride 2 - 5 residual blocks of 128
    - upsample to 64 - upsample to 32 - 9x9 conv 3 - 127.5 + 150 tanh, clipped to 0..255

`VARIANTS` is the one place that chooses between the paper's layers and the improvements every
maintained implementation adopted (instance normalisation, resize-then-convolve upsampling,
reflection padding). Images are [batch, height, width, 3] float32 RGB in 0..255; the output has the
input's size for any size (the upsampling targets the encoder's own map sizes).
"""
from dataclasses import dataclass

import numpy as np

from quiet_tf import tf

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


class TransformNet(tf.Module):
    """The image transformation network. `widths` are the channels of the three resolutions
    (Johnson's 32, 64, 128; tests use a few); `dtype` is the arithmetic of the convolutions; `seed`
    draws the initial weights."""

    def __init__(self, widths=JOHNSON_WIDTHS, variant="improved", residual_blocks=RESIDUAL_BLOCKS,
                 dtype=tf.float32, seed=0, name="transform_net"):
        super().__init__(name=name)
        self.dtype = tf.as_dtype(dtype)
        v, rng = VARIANTS[variant], np.random.default_rng(seed)
        c1, c2, c3 = widths
        self.conv1, self.norm1 = Conv(3, c1, 9, rng, padding=v.padding), _norm(v, c1, "norm1")
        self.down1 = Conv(c1, c2, 3, rng, stride=2, padding=v.padding)
        self.norm2 = _norm(v, c2, "norm2")
        self.down2 = Conv(c2, c3, 3, rng, stride=2, padding=v.padding)
        self.norm3 = _norm(v, c3, "norm3")
        self.residuals = [ResidualBlock(c3, v, rng, name=f"residual{i + 1}") for i in range(residual_blocks)]
        if v.upsampling == "resize":
            self.up1, self.up2 = ResizeConv(c3, c2, rng, v.padding), ResizeConv(c2, c1, rng, v.padding)
        else:
            self.up1, self.up2 = TransposedConv(c3, c2, rng), TransposedConv(c2, c1, rng)
        self.norm4, self.norm5 = _norm(v, c2, "norm4"), _norm(v, c1, "norm5")
        self.conv_out = SpaceToDepthConv(c1, 3, 9, rng, padding=v.padding)

    def __call__(self, images, training=False):
        x = tf.cast(images / 127.5 - 1.0, self.dtype)
        full = tf.shape(x)[1:3]
        x = tf.nn.relu(self.norm1(self.conv1(x), training))
        x = tf.nn.relu(self.norm2(self.down1(x), training))
        half = tf.shape(x)[1:3]
        x = tf.nn.relu(self.norm3(self.down2(x), training))
        for block in self.residuals:
            x = block(x, training)
        x = tf.nn.relu(self.norm4(self.up1(x, half), training))
        x = tf.nn.relu(self.norm5(self.up2(x, full), training))
        # The scaled tanh of jcjohnson's and lengstrom's code: it reaches 0 and 255 before it saturates,
        # so a black or white region still has gradients (127.5 * (1 + tanh) traps them at 0).
        stylized = 127.5 + 150.0 * tf.tanh(tf.cast(self.conv_out(x), tf.float32))
        return stylized if training else tf.clip_by_value(stylized, 0.0, 255.0)
