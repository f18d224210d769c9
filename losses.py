"""The losses of Gatys et al. (2015, 2016) and of Johnson et al. (2016), on VGG feature maps.

Feature maps are [batch, height, width, channels]; a target broadcasts over the batch. N_l is a
layer's channels, M_l its positions (height x width), G = F^T F the unnormalised Gram matrix and A
the style image's, at the M_l positions it is compared with. Gatys et al.'s losses come in unit
systems (`UNITS`, chosen by `stylize.Settings.loss_units`), which differ by size-dependent constants,
so that the same alpha/beta means a different balance in each:
    "printed"  the paper's formulas as printed (and the course write-up's):
               content  Lc  = 1/2 sum (F - P)^2
               style    E_l = 1/(4 N_l^2 M_l^2) sum (G - A)^2
    "authors"  the authors' implementation, which averages instead of summing:
               content  Lc  = mean over the N M elements of (F - P)^2 = 1/(N M) sum (F - P)^2
               style    E_l = mean over the N^2 entries of (G/M - A/M)^2 = 1/(N^2 M^2) sum (G - A)^2
In "printed" units the content term grows with the image (N M) and the style term does not, so the
balance point of alpha/beta falls as 1/(H W); in "authors" units it stays put. Both use the summed
TV loss below. A unit system is one `Units` entry: add one to add a formula set.
Johnson et al. normalise each layer by its size C*H*W instead:
    content  ||F - P||^2 / (C H W),  style ||G/(C H W) - A||^2 (A computed the same way).

`UNITS` holds the unit systems an image optimisation can use (Settings.loss_units): each source's
content, per-layer style and TV formulas, so that its weights mean what they meant there.
"""
from dataclasses import dataclass
from typing import Callable

from quiet_tf import tf


def gram_matrix(features, normalize=False):
    """G = F^T F over the positions of each image ([batch, C, C], float32); divided by C*H*W if
    `normalize`. A bfloat16 map is multiplied as it is: accumulated in float32, each entry rounded
    to bfloat16 (three significant digits) and returned as float32; on AVX512_BF16 three times as
    fast as widening it, with no float32 copy of the map (3.2 GB for relu1_1 at 4096 px). Any other
    is widened to float32 first (a Gram's sums pass float16's range)."""
    if features.dtype != tf.bfloat16:
        features = tf.cast(features, tf.float32)
    shape = tf.shape(features)
    flat = tf.reshape(features, [shape[0], shape[1] * shape[2], shape[3]])
    gram = tf.cast(_self_product(flat), tf.float32)
    if normalize:
        gram /= tf.cast(shape[1] * shape[2] * shape[3], tf.float32)
    return gram


@tf.custom_gradient
def _self_product(flat):
    """F^T F, whose gradient is one product F (dG + dG^T). Differentiated as a product of two
    factors it is two, F dG^T + F dG, and their sum over the whole map: at 512 px on two cores that
    made the Gram's forward and backward at relu1_1 1.6x as slow in float32 (27 against 17 ms) and
    1.9x in bfloat16 (19 against 10 ms)."""
    def gradient(upstream):
        return tf.matmul(flat, upstream + tf.linalg.matrix_transpose(upstream))
    return tf.matmul(flat, flat, transpose_a=True), gradient


def content_loss(features, target):
    """Gatys et al.'s Lc = 1/2 sum (F - P)^2."""
    return 0.5 * tf.reduce_sum(tf.square(features - target))


def style_loss(features, target_gram):
    """Gatys et al.'s E_l = 1/(4 N^2 M^2) sum (G - A)^2 for one layer."""
    shape = tf.shape(features)
    channels = tf.cast(shape[3], tf.float32)
    positions = tf.cast(shape[1] * shape[2], tf.float32)
    difference = gram_matrix(features) - target_gram
    return tf.reduce_sum(tf.square(difference)) / (4.0 * channels ** 2 * positions ** 2)


def feature_reconstruction_loss(features, target):
    """Johnson et al.'s content loss: ||F - P||^2 / (C H W), averaged over the batch."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(features - target), axis=[1, 2, 3])) / _size(features)


def style_reconstruction_loss(features, target_gram):
    """Johnson et al.'s style loss: squared Frobenius norm of G - A with size-normalised Grams,
    averaged over the batch."""
    difference = gram_matrix(features, normalize=True) - target_gram
    return tf.reduce_mean(tf.reduce_sum(tf.square(difference), axis=[1, 2]))


def total_variation_loss(images):
    """Sum of squared differences between neighbouring pixels (horizontal and vertical)."""
    down = images[:, 1:, :, :] - images[:, :-1, :, :]
    right = images[:, :, 1:, :] - images[:, :, :-1, :]
    return tf.reduce_sum(tf.square(down)) + tf.reduce_sum(tf.square(right))


def keras_content_loss(features, target):
    """The Keras example's content loss: sum (F - P)^2 (no 1/2)."""
    return tf.reduce_sum(tf.square(features - target))


def keras_style_loss(features, target_gram, input_positions):
    """The Keras example's per-layer style loss, quirk included: sum (G - A)^2 / (4 * 3^2 * S^2) with
    its constants channels = 3 and size = S = rows * cols of the input image, at every layer (the
    printed formula has the layer's N_l and M_l there)."""
    difference = gram_matrix(features) - target_gram
    return tf.reduce_sum(tf.square(difference)) / (4.0 * 3.0 ** 2 * tf.cast(input_positions, tf.float32) ** 2)


def keras_total_variation_loss(images):
    """The Keras example's TV: sum over the (H-1)(W-1) pixels with a right and a lower neighbour, and
    over channels, of (dx^2 + dy^2)^1.25."""
    down = tf.square(images[:, 1:, :-1, :] - images[:, :-1, :-1, :])
    right = tf.square(images[:, :-1, 1:, :] - images[:, :-1, :-1, :])
    return tf.reduce_sum(tf.pow(down + right, 1.25))


def mean_content_loss(features, target):
    """Mean over the N*M elements of (F - P)^2 (the TF tutorial's content loss)."""
    return tf.reduce_mean(tf.square(features - target))


def mean_style_loss(features, target_gram):
    """Mean over the N^2 entries of (G/M - A/M)^2, M the layer's positions (the TF tutorial's per-layer
    style loss: Grams divided by the number of positions, then a mean squared error)."""
    shape = tf.shape(features)
    positions = tf.cast(shape[1] * shape[2], tf.float32)
    return tf.reduce_mean(tf.square((gram_matrix(features) - target_gram) / positions))


def tutorial_total_variation_loss(images):
    """tf.image.total_variation of the image in 0..1, as the TF tutorial optimises it: the sum of the
    absolute differences between neighbouring pixels (images here are 0..255, hence the 1/255)."""
    return tf.reduce_sum(tf.image.total_variation(tf.convert_to_tensor(images) / 255.0))


@dataclass(frozen=True)
class Units:
    """One source's loss formulas. `style(features, target_gram, input_positions)` gets the target's
    unnormalised Gram matrix at the output's positions and the input image's H*W.

    `reference_balance` is the alpha/beta that balances the content and style gradients at white
    noise on the reference network, in these units: `--balance auto` rescales beta so that the
    user's alpha/beta stands in the same relation to the network's own balance point (stylize.py).
    Where no measurement on the source's network exists, it is the source's own alpha/beta: its
    authors tuned those weights to give a styled picture on their network.
    """
    content: Callable
    style: Callable
    tv: Callable
    reference_balance: float


UNITS = {
    # reference 5e-2: the write-up's own alpha/beta (5/100), so `fast` balances at its weights.
    "printed": Units(content_loss, lambda features, gram, _: style_loss(features, gram), total_variation_loss,
                     5e-2),
    # The authors' means (mean over the N M elements; over the N^2 entries of (G/M - A/M)^2); reference
    # 1e-3: the paper's Fig. 2 ratio on its normalised VGG19 (docs/neural_style.md, "Balance").
    "authors": Units(mean_content_loss, lambda features, gram, _: mean_style_loss(features, gram),
                     total_variation_loss, 1e-3),
    # References: each source's own alpha/beta (0.025 / 1.0; 1e4 / 1e-2), as for "printed".
    "keras": Units(keras_content_loss, keras_style_loss, keras_total_variation_loss, 0.025),
    "tf-tutorial": Units(mean_content_loss, lambda features, gram, _: mean_style_loss(features, gram),
                         tutorial_total_variation_loss, 1e6),
}


def _size(features):
    shape = tf.shape(features)
    return tf.cast(shape[1] * shape[2] * shape[3], features.dtype)

