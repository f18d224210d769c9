"""The losses of Gatys et al. (2015, 2016) and of Johnson et al. (2016), on VGG feature maps.

Feature maps are [batch, height, width, channels]; a target broadcasts over the batch. Gatys et al.:
    content  Lc  = 1/2 sum (F - P)^2
    style    E_l = 1/(4 N_l^2 M_l^2) sum (G - A)^2,  G = F^T F (unnormalised), N_l channels, M_l positions
Johnson et al. normalise each layer by its size C*H*W instead:
    content  ||F - P||^2 / (C H W),  style ||G/(C H W) - A||^2 (A computed the same way).
"""
from quiet_tf import tf


def gram_matrix(features, normalize=False):
    """G = F^T F over the positions of each image ([batch, C, C]); divided by C*H*W if `normalize`."""
    shape = tf.shape(features)
    flat = tf.reshape(features, [shape[0], shape[1] * shape[2], shape[3]])
    gram = tf.matmul(flat, flat, transpose_a=True)
    if normalize:
        gram /= tf.cast(shape[1] * shape[2] * shape[3], gram.dtype)
    return gram


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


def _size(features):
    shape = tf.shape(features)
    return tf.cast(shape[1] * shape[2] * shape[3], features.dtype)
