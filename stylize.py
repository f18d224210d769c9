"""Gatys et al.'s image optimisation: the output image is the variable, VGG features define its loss.

`stylize()` computes the targets (content features, style Gram matrices) once, then runs Adam or
L-BFGS on the image, calling a monitor at every iteration with the loss terms; the monitor prints,
saves checkpoints and can stop the run. The result is always an image: the last one on completion
or interruption, the last finite one if the loss stops being finite.
"""
import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.optimize

import files
import images
import losses
import presets
from presets import COLOR_CONTROLS, INITS, OPTIMIZERS
import vgg
from adam import Adam
from errors import UserError
from quiet_tf import tf
from vgg import VGG, resolve_precision

LBFGS_IMPLS = ("tf", "scipy")  # lbfgs.py on the device, or scipy's L-BFGS-B on the host
LOSS_UNITS = tuple(losses.UNITS)
BALANCES = ("auto", "off")  # or a positive number: the factor itself


def _writeup(name):
    """The course write-up's value of a setting: Settings' defaults are that preset."""
    value = presets.PRESETS["writeup"][name]
    return field(default_factory=lambda: copy.deepcopy(value))


@dataclass
class Settings:
    """Everything that defines a run; the defaults are the course write-up's recipe (presets.py)."""
    content_layers: dict = _writeup("content_layers")
    style_layers: dict = _writeup("style_layers")
    content_weight: float = _writeup("content_weight")  # alpha
    style_weight: float = _writeup("style_weight")  # beta
    tv_weight: float = _writeup("tv_weight")
    style_blend_weights: list | None = None  # one per style image; normalised to sum 1
    style_scale: float = 1.0  # style long side relative to the output's
    optimizer: str = _writeup("optimizer")
    learning_rate: float = _writeup("learning_rate")
    lbfgs_impl: str = "tf"  # one of LBFGS_IMPLS: lbfgs.py, or scipy's (unbounded and rounds: keras)
    # lbfgs.py's initial matrix weighs the image's long waves and quiet values up (lbfgs_optimizer):
    # fast's lever. Off elsewhere: from white noise, texture alone drifts into broad blobs the
    # paper's L-BFGS never made (docs/speed.md).
    lbfgs_preconditioned: bool = False
    iterations: int = _writeup("iterations")
    init: str = _writeup("init")
    noise_ratio: float = _writeup("noise_ratio")
    seed: int | None = None
    pooling: str = _writeup("pooling")
    color_control: str = "none"  # "luminance" (luminance-only transfer) or "histogram" (Gatys et al. 2017)
    style_layer_sets: list | None = None  # per style image, the style layers it supplies (default all)
    precision: str = _writeup("precision")  # of the network; losses, Grams and optimiser state stay float32
    scales: tuple = _writeup("scales")  # (fraction of the output size, iterations or None: `iterations`)
    recompute: object = "auto"  # True, False, or "auto": when activations would not fit in memory
    normalize_network: bool = _writeup("normalize_network")  # Gatys et al.'s rescaled weights (vgg.normalize)
    loss_units: str = _writeup("loss_units")  # a key of losses.UNITS: the paper's printed sums, the authors' means, a source's
    balance: object = _writeup("balance")  # "off", "auto" (calibrate beta; resolve_balance) or the factor
    adam_beta1: float = 0.9
    adam_epsilon: float = 1e-8  # TF1/Keras epsilon, outside the square root
    lbfgs_round: int | None = None  # L-BFGS evaluations before its history is dropped (Keras: 20); None: never
    clip_image: bool = True  # keep the image in 0..255 while optimising (the write-up and Keras did not)
    writeup_exact: bool = False  # the write-up's code to the letter, mistakes included (writeup_exact_images)

    def total_iterations(self):
        """Iterations over all scales, numbered on across them (a scale too small for the network is
        skipped at run time, so a run may end below this)."""
        return sum(count or self.iterations for _, count in self.scales)


@dataclass
class Progress:
    """The state after one iteration: losses are the terms before alpha, beta and the TV weight."""
    iteration: int
    total_iterations: int
    seconds: float  # since the optimisation started
    content_loss: float
    style_loss: float
    tv_loss: float
    total_loss: float
    image: callable  # () -> the current image as it would be saved
    done: float = None  # the share of the run's work done (an iteration weighs as its scale's pixels)

    def as_record(self):
        return {"iteration": self.iteration, "seconds": round(self.seconds, 4),
                "content_loss": self.content_loss, "style_loss": self.style_loss,
                "tv_loss": self.tv_loss, "total_loss": self.total_loss}


@dataclass
class Result:
    image: np.ndarray
    iterations: int  # the iteration the image belongs to
    status: str  # "done", "interrupted" or "diverged"
    balance: float = 1.0  # the factor beta was multiplied by (settings.balance resolved)


class Objective:
    """alpha * content + balance * beta * style + tv_weight * TV of an image, against fixed targets,
    in the unit system `settings.loss_units` (losses.UNITS).

    Each style image has a blend weight, optionally its own subset of the style layers (scale
    control: the fine layers of one style with the coarse layers of another) and optionally a mask
    over the output (spatial control, Gatys et al. 2017: guided Gram matrices of the masked
    features). At each layer, the blend weights of the styles that use it are normalised to sum 1.
    """

    def __init__(self, vgg, content, styles, blend_weights, settings, masks=None, balance=1.0):
        self.vgg = vgg
        self.units = losses.UNITS[settings.loss_units]
        self.content_layers = settings.content_layers
        self.settings = settings
        self.set_balance(balance)
        # One map at a time, the styles' reduced to Gram matrices at once: at 4096 px block 1's
        # maps are gigabytes each.
        self.content_targets, sizes = {}, {}
        for name, features in vgg.each(content[np.newaxis]):
            sizes[name] = features.shape[1:3]
            if name in self.content_layers:
                self.content_targets[name] = tf.cast(features, tf.float32)
        layer_sets = settings.style_layer_sets or [list(settings.style_layers)] * len(styles)
        style_grams = [  # per style image, {layer it uses: (Gram matrix, positions)}
            {name: (losses.gram_matrix(tf.cast(features, tf.float32)), int(np.prod(features.shape[1:3])))
             for name, features in vgg.each(style[np.newaxis]) if name in settings.style_layers and name in used}
            for style, used in zip(styles, layer_sets)]
        self.style_terms = []  # (layer, weight, target Gram, mask at the layer's size or None)
        for name, weight in settings.style_layers.items():
            users = [i for i, layer_set in enumerate(layer_sets) if name in layer_set]
            share = sum(blend_weights[i] for i in users)
            height, width = sizes[name]
            for i in users if share > 0 else ():
                mask = None
                if masks is not None and masks[i] is not None:
                    mask = tf.image.resize(masks[i][np.newaxis, :, :, np.newaxis], (height, width),
                                           method="area")
                # An unnormalised Gram sums over positions: rescale the style's to the positions it
                # is compared with (the output's, or the mask's weight), so that E_l compares like
                # with like (a no-op for an unmasked style image of the output's size).
                compared = height * width if mask is None else float(tf.reduce_sum(tf.square(mask)))
                gram, positions = style_grams[i][name]
                gram = gram * (compared / positions)
                self.style_terms.append((name, weight * blend_weights[i] / share, gram, mask))

    def set_balance(self, balance):
        """Multiply beta by `balance` from now on (before the loss is first compiled)."""
        settings = self.settings
        self.weights = tf.constant([settings.content_weight, balance * settings.style_weight,
                                    settings.tv_weight], tf.float32)

    def gradient_norms(self, image):
        """|grad Lc| and |grad Ls| at a [H, W, 3] image (the terms before alpha and beta)."""
        x = tf.constant(np.asarray(image, np.float32)[np.newaxis])

        # A compiled pass per term: eagerly, or with one persistent tape for both, every map of the
        # forward pass would be held through the backward passes (over 30 GB at 4096 px).
        @tf.function
        def norm(term):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = self.terms(x)[term]
            return tf.norm(tape.gradient(loss, x))
        return float(norm(0)), float(norm(1))

    def terms(self, image):
        """[content, style, TV] loss of a [1, H, W, 3] image, per-layer weights applied."""
        features = self.vgg.native(image)
        positions = tf.shape(image)[1] * tf.shape(image)[2]

        def layer_loss(loss, widen):
            """`loss` of a layer's features, taken in float32 if `widen` (a Gram is taken from the
            map's own precision: losses.gram_matrix). With recomputation the loss's own copies
            are recomputed too."""
            of_map = (lambda f: loss(tf.cast(f, tf.float32))) if widen else loss
            return tf.recompute_grad(of_map) if self.vgg.recompute else of_map
        content = tf.add_n([weight * layer_loss(lambda f, target=self.content_targets[name]:
                                                self.units.content(f, target), widen=True)(features[name])
                            for name, weight in self.content_layers.items()])
        style = tf.add_n([weight * layer_loss(lambda f, gram=gram, mask=mask: self.units.style(
                              f if mask is None else f * tf.cast(mask, f.dtype), gram, positions),
                              widen=False)(features[name])
                          for name, weight, gram, mask in self.style_terms])
        tv = self.units.tv(image)
        if self.settings.tv_weight == 0:  # reported only: skip a backward pass that would be times 0
            tv = tf.stop_gradient(tv)
        return tf.stack([content, style, tv])

    def total(self, terms):
        return tf.reduce_sum(self.weights * terms)


class LossScale:
    """Dynamic loss scaling for a float16 network, whose backward pass overflows past 65504 and loses
    gradients below 6e-8: the loss is multiplied by `scale` before the backward pass and the gradient
    divided by it in float32. A gradient that is not finite halves the scale (its step is to be
    skipped); `growth_interval` finite ones in a row double it. In another precision the scale is 1
    and every gradient is used as it is."""

    def __init__(self, dtype, initial=2.0 ** 15, growth_interval=200):
        self.dynamic = dtype == tf.float16
        self.scale = tf.Variable(initial if self.dynamic else 1.0)
        self.finite_steps = tf.Variable(0)
        self.growth_interval = growth_interval

    def gradient(self, tape, scaled_total, variable):
        """(gradient of the unscaled loss, whether its step should be taken), given a tape that
        recorded `scaled_total` = loss * self.scale; updates the scale."""
        gradient = tape.gradient(scaled_total, variable)
        if not self.dynamic:  # the scale is 1: no image-sized division
            return gradient, tf.constant(True)
        gradient = gradient / self.scale
        finite = tf.reduce_all(tf.math.is_finite(gradient))
        count = tf.where(finite, self.finite_steps + 1, 0)
        grow = count >= self.growth_interval
        self.scale.assign(tf.where(finite, tf.where(grow, 2.0, 1.0), 0.5) * self.scale)
        self.finite_steps.assign(tf.where(grow, 0, count))
        return gradient, finite


def stylize(network, content, styles, settings, monitor=lambda progress: True, init_image=None,
            masks=None):
    """Render `content` (float32 RGB 0..255, already at the output size) in the style of `styles`.

    `monitor(progress)` is called for iteration 0 (the initial image) and after every iteration;
    returning False stops the run. With several `settings.scales` the image is optimised at each
    fraction of the output size in turn, upsampled between them (coarse to fine). `masks`, one per
    style image or None, are grayscale arrays (0..1) over the output: each style applies where its
    mask is white. Returns a Result (its image None when the loss was not finite even at the
    start).
    """
    check_inputs(settings, content, styles, init_image, masks)
    blend = np.asarray(settings.style_blend_weights or [1.0] * len(styles), dtype=np.float64)
    blend = blend / blend.sum()
    if settings.writeup_exact:
        content, styles = writeup_exact_images(content, styles)
    original_content = content
    if settings.color_control == "luminance":  # transfer on luminance; colours from the content
        styles = [images.match_luminance(style, content) for style in styles]
        content = images.luminance(content)
        if init_image is not None:
            init_image = images.luminance(init_image)
    elif settings.color_control == "histogram":  # the styles take on the content's colours first
        styles = [images.match_colors(style, content) for style in styles]

    if settings.normalize_network:
        network = vgg.normalize(network, *images.sample_photos(), pooling=settings.pooling)
    layers = list(settings.content_layers) + list(settings.style_layers)
    plan = [(_scaled_size(content.shape, fraction), iterations or settings.iterations)
            for fraction, iterations in settings.scales]
    # A coarse scale too small for the deepest layer is skipped; the full size is checked below.
    min_size = max(network.min_size(name) for name in layers)
    plan = [step for step in plan[:-1] if min(step[0]) >= min_size] + plan[-1:]
    nets = {}  # one network per precision and memory mode, shared by the scales

    def net_for(precision, height, width):
        precision = resolve_precision(precision)
        recompute = settings.recompute
        if recompute == "auto":
            recompute = _needs_recompute(network, layers, height, width, precision)
        if (precision, recompute) not in nets:
            nets[precision, recompute] = VGG(network, layers, pooling=settings.pooling, dtype=precision,
                                             recompute=recompute)
        return nets[precision, recompute]

    # L-BFGS in reduced precision goes on in float32 once rounding noise stops it (_lbfgs).
    reduced = resolve_precision(settings.precision) != "float32"
    report = _Reporter(monitor, plan)
    image = None
    for i, ((height, width), iterations) in enumerate(plan):
        net = net_for(settings.precision, height, width)
        scaled_content = images.resize(content, height, width)
        long_side = max(1, round(settings.style_scale * max(height, width)))
        scaled_styles = [images.fit_long_side(style, long_side) for style in styles]
        _check_size("content image", scaled_content, net)
        for j, style in enumerate(scaled_styles):
            _check_size(f"style image {j + 1}" if len(styles) > 1 else "style image", style, net)
        scaled_masks = masks and [None if mask is None else images.resize_mask(mask, height, width)
                                  for mask in masks]
        # Calibrated at white noise (the paper's start, a fixed seed) whatever the run starts from
        # (from the content the content gradient is 0), and at every scale, so that each scale aims
        # at the same balance (in printed units the balance point moves with the size).
        # In the run's precision (in float32 the calibration alone would take over 20 GB at 4096
        # px), except float16, whose gradient norms have no loss scaling to keep them finite.
        noise = np.clip(initial_image(replace(settings, init="noise", seed=0), scaled_content,
                                      scaled_styles[0], network.mean_pixel), 0.0, 255.0)
        calibration = replace(settings, precision=_calibration_precision(settings.precision))
        balance = resolve_balance(calibration, lambda: Objective(
            net_for(calibration.precision, height, width), scaled_content, scaled_styles, blend, settings,
            scaled_masks), network, noise, scaled_content, scaled_styles, scaled_masks)
        start = initial_image(settings, scaled_content, scaled_styles[0], network.mean_pixel, init_image)
        if image is not None:
            start = upsample_with_detail(image, start)
        objective = Objective(net, scaled_content, scaled_styles, blend, settings, scaled_masks, balance)
        exact = None
        if reduced and settings.optimizer == "lbfgs" and _float32_fits(network, layers, height, width):
            exact = lambda: Objective(net_for("float32", height, width), scaled_content, scaled_styles,
                                      blend, settings, scaled_masks, balance)
        colours = images.resize(original_content, height, width)
        finish = (lambda x, colours=colours: images.with_colors_of(x, colours)) \
            if settings.color_control == "luminance" else (lambda x: x)
        if settings.writeup_exact:  # its output: the variable plus the RGB mean, truncated to uint8
            finish = lambda x, colour=finish: np.floor(np.clip(colour(x), 0.0, 255.0))
        report.next_scale(finish, first=i == 0)
        # Later scales begin with an evaluation of the upsampled image: it counts as an iteration.
        steps = iterations if i == 0 else iterations - 1
        clip = settings.clip_image and not settings.writeup_exact
        start = np.clip(start, 0.0, 255.0) if clip else start
        if settings.optimizer == "adam":
            reached, done, status = _adam(objective, start, steps, settings, report, clip)
        else:
            if settings.lbfgs_impl == "tf":
                reached, done, status = _lbfgs_tf(objective, np.clip(start, 0.0, 255.0), steps, report, exact,
                                                  settings.lbfgs_preconditioned)
            else:
                reached, done, status = _lbfgs(objective, start, steps, report, exact, clip,
                                               settings.lbfgs_round)
        # None: not finite from the first evaluation; a later scale keeps the earlier scale's image.
        image = reached if reached is not None else (None if i == 0 else start)
        if status != "done":
            break
    return Result(None if image is None else report.finish(image), report.iteration_of(done), status,
                  balance)


def resolve_balance(settings, objective, network, start, content, styles, masks):
    """The factor beta is multiplied by: 1 ("off"), the given number, or ("auto") the calibration

        factor = reference_balance * |grad Lc| / |grad Ls|   at `start` (white noise),

    so that alpha/beta balances the content and style gradients there as it did on the reference
    network (alpha/beta = reference_balance: equal gradients). `objective()` builds the run's
    objective (its precision); the factor is cached beside the network, keyed by everything it depends on.
    """
    if settings.balance == "off":
        return 1.0
    if settings.balance != "auto":
        return float(settings.balance)
    digest = hashlib.sha256()
    for array in [start, content, *styles, *(m for m in masks or () if m is not None)]:
        digest.update(np.ascontiguousarray(array, np.float32).tobytes())
    key = json.dumps({"network_sha256": network.sha256, "normalization": network.normalization,
                      "loss_units": settings.loss_units, "pooling": settings.pooling,
                      "precision": resolve_precision(settings.precision),
                      "content_layers": settings.content_layers, "style_layers": settings.style_layers,
                      "style_layer_sets": settings.style_layer_sets,
                      "blend": settings.style_blend_weights, "images": digest.hexdigest(),
                      "format": 2}, sort_keys=True)  # 2: bfloat16 Grams taken in bfloat16
    key = hashlib.sha256(key.encode()).hexdigest()
    reference = losses.UNITS[settings.loss_units].reference_balance
    cache = _balance_cache(network)
    if key in cache:
        return cache[key]
    content_norm, style_norm = objective().gradient_norms(start)
    if not (np.isfinite(content_norm) and np.isfinite(style_norm)) or style_norm <= 0 or content_norm <= 0:
        raise UserError(f"--balance auto cannot calibrate: at white noise the content gradient is "
                        f"{content_norm:g} and the style gradient {style_norm:g}; give --balance a number")
    factor = reference * content_norm / style_norm
    _save_balance_cache(network, dict(list(cache.items())[-(BALANCE_CACHE_SIZE - 1):], **{key: factor}))
    return factor


BALANCE_CACHE_SIZE = 200  # factors kept per network (runs without --seed make a new one each)


def _balance_path(network):
    folder = vgg._cache_folder(vgg.Path(network.path))
    return folder / "balance.json" if folder else None


def _balance_cache(network):
    """The stored factors; a damaged file or entry (not a finite positive number) is measured again."""
    path = _balance_path(network)
    try:
        cache = json.loads(path.read_text()) if path and path.exists() else {}
    except (OSError, ValueError):  # unreadable: measure again
        return {}
    factors = {}
    for key, value in (cache.items() if isinstance(cache, dict) else ()):
        try:
            factor = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer
            continue
        if np.isfinite(factor) and factor > 0:
            factors[key] = factor
    return factors


def _save_balance_cache(network, cache):
    """Atomically, best effort: a run goes on without the cache where it cannot be written."""
    path = _balance_path(network)
    if path is not None:
        try:
            files.write_text(path, json.dumps(cache))
        except OSError:
            pass


class _Reporter:
    """Numbers the iterations of all scales in one sequence and hands them to the monitor, with the
    share of the run's work done, an iteration weighing as its scale's pixels (the ETA's measure)."""

    def __init__(self, monitor, plan):
        self.monitor, self.total = monitor, sum(iterations for _, iterations in plan)
        self.pixels = [height * width for (height, width), _ in plan]
        self.work = [pixels * iterations for pixels, (_, iterations) in zip(self.pixels, plan)]
        self.offset, self.next_offset, self.start, self.finish, self.scale = 0, 0, None, None, -1

    def next_scale(self, finish, first):
        self.offset = self.next_offset + (0 if first else 1)
        self.finish = finish
        self.scale += 1

    def iteration_of(self, local_iteration):
        return self.offset + local_iteration

    def __call__(self, local_iteration, terms, total, image):
        """`image()` gives the current image; returns False when the run should stop."""
        if self.start is None:
            self.start = time.perf_counter()
        self.next_offset = self.offset + local_iteration
        # A later scale's first evaluation (of the upsampled image) is its first iteration.
        done = (sum(self.work[:self.scale]) + self.pixels[self.scale] * (local_iteration + (self.scale > 0)))
        progress = Progress(self.offset + local_iteration, self.total, time.perf_counter() - self.start,
                            *map(float, terms), float(total), lambda: self.finish(image()), min(1.0, done / sum(self.work)))
        return self.monitor(progress)


def _calibration_precision(precision):
    resolved = resolve_precision(precision)
    return "float32" if resolved == "float16" else resolved


def _scaled_size(shape, fraction):
    return max(1, round(shape[0] * fraction)), max(1, round(shape[1] * fraction))


# TensorFlow's CPU allocator (oneDNN's, on x86) keeps every block it has ever held and reuses it:
# at 2048x1536 that is 40% of a step faster than the system's, and a run peaks at 6-7 GB; at
# 4096x3072, where 17.5 GB are alive at once, the blocks it keeps passed 22.5 GB (docs/speed.md).
RETURNING_ALLOCATOR_PIXELS = 2048 * 2048


def use_returning_allocator(height, width):
    """For an output of more than RETURNING_ALLOCATOR_PIXELS, the system's allocator, which returns
    what is freed, unless the user chose (TF_ONEDNN_USE_SYSTEM_ALLOCATOR). It must be called before
    TensorFlow's first operation: the allocator is chosen when it is first used."""
    if height * width > RETURNING_ALLOCATOR_PIXELS:
        os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "true")


def _float32_fits(network, layers, height, width):
    """Whether a float32 evaluation fits in the host memory available (as _needs_recompute, it does
    not look at a GPU's): its activations and half as much again (a bfloat16 evaluation at
    4096x3072 with recomputation: 17.5 GB live for 13.3 GB of activations). Where it does not
    (4096 px on a 24 GB machine), reduced precision finishes by itself."""
    return 1.5 * activation_bytes(network, layers, height, width, "float32") < _available_memory()


def _needs_recompute(network, layers, height, width, precision):
    """Recompute activations when storing them for the backward pass would take more than a third
    of the memory available now."""
    stored = activation_bytes(network, layers, height, width, precision)
    return stored > _available_memory() / 3


def activation_bytes(network, layers, height, width, precision):
    """Bytes of the activations a forward pass keeps for the backward pass (conv and ReLU outputs)."""
    itemsize = 2 if resolve_precision(precision) in ("bfloat16", "float16") else 4
    deepest = max(network.index(name) for name in layers)
    total, channels = 0, 3
    for layer in network.layers[:deepest + 1]:
        if layer.type == "pool":
            height, width = -(-height // layer.stride[0]), -(-width // layer.stride[1])
        elif layer.type == "conv":
            channels = layer.kernel.shape[3]
        total += height * width * channels * itemsize
    return total


def _available_memory():
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # not Linux: assume a laptop


def initial_image(settings, content, style, mean_pixel, init_image=None):
    """The starting point: the write-up's noise blend (in the network's mean-subtracted input
    space, as it did), white noise around the mean pixel, the content, the style or a given image."""
    rng = np.random.default_rng(settings.seed)
    shape = content.shape
    if settings.init == "content":
        return content.copy()
    if settings.init == "style":
        return images.resize(style, *shape[:2])
    if settings.init == "image":
        if init_image is None:
            raise UserError("--init image needs --init-image PATH")
        return images.resize(init_image, *shape[:2])
    ratio = 1.0 if settings.init == "noise" else settings.noise_ratio
    mean = np.asarray(mean_pixel, np.float32)
    noise = rng.uniform(-20.0, 20.0, shape).astype(np.float32)
    return (mean + ratio * noise + (1.0 - ratio) * (content - mean)).astype(np.float32)


def upsample_with_detail(coarse, start):
    """A coarse scale's result at the size of `start` (this scale's start image), with the detail
    of `start` finer than the coarse scale could hold added back: what the coarse scale changed is
    carried up, and the rest stays as the run began. From the content, `fast`'s full size reached
    its target in 15% fewer evaluations than from the upsampled result alone (docs/speed.md)."""
    height, width = start.shape[:2]
    blurred = images.resize(images.resize(start, *coarse.shape[:2]), height, width)
    return images.resize(coarse, height, width) + (start - blurred)


def writeup_exact_images(content, styles):
    """The write-up's inputs, mistakes included: each style image resized to the content's exact height
    and width (nearest neighbour, aspect distorted), then Keras' BGR preprocessing on every image. The
    network subtracts its RGB mean pixel once more, as the write-up's graph did; what the write-up
    saved, that input plus the RGB mean, is then the image itself (truncated to uint8 by `stylize`)."""
    height, width = content.shape[:2]
    styles = [images.resize_nearest(style, height, width) for style in styles]
    return images.keras_preprocess(content), [images.keras_preprocess(style) for style in styles]


def adam_functions(objective, start, settings, clip=True):
    """An Adam run's state and its two compiled functions: (image, previous, evaluate, step).
    evaluate() gives the loss terms and total at the image (keeping its gradient); step() updates
    the image from that gradient and evaluates the new one. benchmark.py times step() itself."""
    image = tf.Variable(start[np.newaxis])
    previous = tf.Variable(image)
    gradient = tf.Variable(tf.zeros_like(image))
    usable = tf.Variable(True)  # False: the float16 gradient overflowed, the step is skipped
    adam = Adam([image], settings.learning_rate, beta1=settings.adam_beta1, epsilon=settings.adam_epsilon)
    loss_scale = LossScale(objective.vgg.dtype)

    @tf.function
    def evaluate():
        """Loss terms at the current image; its gradient is kept for the next update."""
        with tf.GradientTape() as tape:
            terms = objective.terms(image)
            total = objective.total(terms)
            scaled = total * loss_scale.scale
        unscaled, finite = loss_scale.gradient(tape, scaled, image)
        gradient.assign(unscaled)
        usable.assign(finite)
        return terms, total

    @tf.function
    def step():
        previous.assign(image)
        if usable:  # a tensor: autograph makes this a tf.cond
            adam.apply([gradient])
        if clip:
            image.assign(tf.clip_by_value(image, 0.0, 255.0))  # stay a valid image: losses match the file
        return evaluate()

    return image, previous, evaluate, step


def _adam(objective, start, iterations, settings, report, clip=True):
    """`iterations` Adam steps from `start` (kept in 0..255 if `clip`), with dynamic loss scaling
    for a float16 network (a step whose gradient overflowed is skipped, but counts); returns (image,
    last iteration, status)."""
    image, previous, evaluate, step = adam_functions(objective, start, settings, clip)
    current = lambda: image.numpy()[0]
    iteration = 0
    try:
        terms, total = evaluate()
        while True:
            terms, total = terms.numpy(), float(total)
            if not np.isfinite(total):
                return (previous.numpy()[0] if iteration else None), max(iteration - 1, 0), "diverged"
            if not report(iteration, terms, total, current):
                return current(), iteration, "interrupted"
            if iteration == iterations:
                return current(), iteration, "done"
            terms, total = step()
            iteration += 1
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, keep what we have
        return current(), iteration, "interrupted"


class _Stop(Exception):
    """Raised inside the L-BFGS objective to end scipy's loop."""


class _HandOver(Exception):
    """Raised inside the L-BFGS objective when a reduced-precision loss overflows."""


def _scaled_loss_and_gradient(objective):
    """x -> (loss, gradient, (terms, total)) for either L-BFGS: the loss and gradient multiplied by
    lbfgs.loss_scale of the first gradient (the same minimum), infinite where the gradient is not
    finite (a reduced-precision backward pass can overflow where the float32 loss does not); the
    terms and total unscaled, for the progress report."""
    import lbfgs
    scale = tf.Variable(0.0)  # 0 until the first evaluation sets it

    @tf.function
    def loss_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            terms = objective.terms(x)
            total = objective.total(terms)
        gradient = tape.gradient(total, x)
        scale.assign(tf.where(scale > 0, scale, lbfgs.loss_scale(gradient)))
        finite = tf.reduce_all(tf.math.is_finite(gradient))
        return tf.where(finite, total * scale, float("inf")), gradient * scale, (terms, total)
    return loss_and_gradient


LBFGS_HISTORY = 5  # lbfgs.py's correction pairs for an image (scipy's keeps its own 10, as Keras did)
LBFGS_SCALING = 0.5  # lbfgs.py's per-value diagonal: R^2 from the mean square gradient v as v^(-1/4) (LBFGS.rescale)


def lbfgs_optimizer(objective, x, preconditioned):
    """lbfgs.py's L-BFGS over a [1, H, W, 3] image in 0..255. Five pairs, not the textbook ten: to
    the time-to-quality target at 256 px, 5, 7, 10, 20 and 30 pairs took 226, 223, 230, 238 and 226
    full-size evaluations, while the two-loop recursion, bound by memory, costs in proportion to them,
    and the history holds 2 image-sized vectors a pair (3 GB at 4096x3072 with ten); docs/speed.md.
    `preconditioned`: the initial matrix weighs the image's long waves up (lbfgs.frequency_weights)
    and its values with small gradients (LBFGS.rescale); else it is the identity, scaled."""
    import lbfgs
    initial_matrix = dict(weights=lbfgs.frequency_weights(x.shape), scaling=LBFGS_SCALING) if preconditioned else {}
    return lbfgs.LBFGS(_scaled_loss_and_gradient(objective), x, 0.0, 255.0, history=LBFGS_HISTORY,
                       **initial_matrix)


def _lbfgs_tf(objective, start, iterations, report, exact=None, preconditioned=False):
    """lbfgs.py's L-BFGS on the device, with _lbfgs's contract: an iteration is one evaluation, the
    best image is returned, and in reduced precision `exact()` takes over in float32 once the line
    search stalls (rounding noise) or the loss overflows. In float32 a stall restarts from the best
    image with a fresh history while that still makes progress. `preconditioned`: lbfgs_optimizer's."""
    import lbfgs
    shape = (1,) + start.shape
    optimizer = lbfgs_optimizer(objective, start.reshape(shape), preconditioned)
    iteration, status, best_at_stall = -1, "done", np.inf
    best_iteration, best_loss = 0, np.inf
    try:
        while iteration < iterations:
            loss, (terms, total), event = optimizer.step()
            if not np.isfinite(float(loss)):
                if exact is not None:
                    optimizer = lbfgs_optimizer(exact(), optimizer.best.value(), preconditioned)
                    exact, best_loss = None, np.inf
                    continue
                status = "diverged"
                break
            iteration, total = iteration + 1, float(total)
            if total < best_loss:
                best_loss, best_iteration = total, iteration
            trial = optimizer.trial
            if not report(iteration, terms.numpy(), total, lambda: trial.numpy()[0]):
                status = "interrupted"
                break
            if int(event) == lbfgs.STALLED:
                if exact is not None:  # rounding noise: float32 goes on from the best image
                    optimizer = lbfgs_optimizer(exact(), optimizer.best.value(), preconditioned)
                    exact, best_loss = None, np.inf
                elif best_loss >= best_at_stall:
                    break
                best_at_stall = best_loss
    except KeyboardInterrupt:
        status = "interrupted"
    return optimizer.best.numpy()[0], best_iteration, status


def _lbfgs(objective, start, iterations, report, exact=None, clip=True, round_length=None):
    """scipy's L-BFGS-B, as the Keras example; an iteration is one loss-and-gradient evaluation. The
    image is bounded to 0..255 if `clip`; with a `round_length`, each run of scipy's optimiser gets
    that many evaluations (its own maxfun count) and the next starts afresh, as the Keras example's
    10 calls of fmin_l_bfgs_b(maxfun=20) do.

    In reduced precision the loss carries rounding noise, and L-BFGS stops by itself once a line
    search can no longer tell a decrease from that noise (at about the 450th evaluation of a 512 px
    run in bfloat16), or overflows (float16's range is small). `exact()`, if given, builds the
    float32 objective that takes over from there. Returns the image with the lowest loss seen, its
    iteration and the status.
    """
    shape = (1,) + start.shape
    state = {"iteration": -1, "best": start.astype(np.float64).ravel(), "best_loss": np.inf,
             "best_iteration": 0, "status": "done", "evaluate": _scaled_loss_and_gradient(objective),
             "exact": exact}

    def fun(x):
        if state["iteration"] >= iterations:
            raise _Stop
        loss, gradient, (terms, total) = state["evaluate"](tf.constant(x.reshape(shape), tf.float32))
        loss, total = float(loss), float(total)
        if not np.isfinite(loss):
            if state["exact"] is not None:
                raise _HandOver
            state["status"] = "diverged"
            raise _Stop
        state["iteration"] += 1
        if total < state["best_loss"]:
            state.update(best=x.copy(), best_loss=total, best_iteration=state["iteration"])
        if not report(state["iteration"], terms.numpy(), total,
                      lambda: x.reshape(start.shape).astype(np.float32)):
            state["status"] = "interrupted"
            raise _Stop
        return loss, gradient.numpy().astype(np.float64).ravel()

    try:
        # scipy also ends when a line search finds no decrease: start again from the best image with
        # a fresh history (in float32, after reduced precision) while that still makes progress.
        budget = iterations + 1 if round_length is None else round_length
        while state["iteration"] < iterations:
            best_before = state["best_loss"]
            try:
                scipy.optimize.minimize(fun, state["best"], jac=True, method="L-BFGS-B",
                                        bounds=scipy.optimize.Bounds(0.0, 255.0) if clip else None,
                                        options={"maxiter": budget, "maxfun": budget, "ftol": 0.0, "gtol": 0.0})
            except _HandOver:
                pass
            if state["exact"] is not None:
                # The float32 loss of the best image is its first evaluation there: compare from it.
                state.update(evaluate=_scaled_loss_and_gradient(state["exact"]()), exact=None, best_loss=np.inf)
            elif state["best_loss"] >= best_before:
                break
    except _Stop:
        pass
    except KeyboardInterrupt:
        state["status"] = "interrupted"
    if not np.isfinite(state["best_loss"]) and state["status"] == "diverged":
        return None, 0, "diverged"  # not finite from the start: no image to keep
    best = state["best"].reshape(start.shape).astype(np.float32)
    return best, state["best_iteration"], state["status"]


MAX_STYLE_PIXELS = 4096 * 4096  # a style image scaled past this would need many GB of activations


def check_inputs(settings, content, styles, init_image=None, masks=None):
    """Every check that needs no network: a UserError for settings and images that cannot make a
    result, so that a command line fails in a second rather than after loading the network."""
    _check_settings(settings, len(styles))
    _check_masks(masks, len(styles))
    if settings.init == "image" and init_image is None:
        raise UserError("--init image needs --init-image PATH")
    long_side = max(1, round(settings.style_scale * max(content.shape[:2])))
    for i, style in enumerate(styles):
        height, width = style.shape[:2]
        scale = long_side / max(height, width)
        pixels = round(height * scale) * round(width * scale)
        if pixels > MAX_STYLE_PIXELS:
            raise UserError(f"--style-scale {settings.style_scale:g} makes style image {i + 1} "
                            f"{round(width * scale)}x{round(height * scale)} px ({pixels / 1e6:.0f} "
                            f"megapixels), more than the {MAX_STYLE_PIXELS / 1e6:.0f} this program "
                            f"allows; lower --style-scale (1 is the output's size)")


def _check_settings(settings, style_count):
    if settings.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not '{settings.optimizer}'")
    if settings.lbfgs_impl not in LBFGS_IMPLS:
        raise UserError(f"L-BFGS implementation must be one of {', '.join(LBFGS_IMPLS)}, not "
                        f"'{settings.lbfgs_impl}'")
    if settings.init not in INITS:
        raise UserError(f"init must be one of {', '.join(INITS)}, not '{settings.init}'")
    if style_count < 1:
        raise UserError("give at least one style image")
    if settings.iterations < 1:
        raise UserError(f"iterations must be a positive number, not {settings.iterations}")
    fractions = [fraction for fraction, _ in settings.scales]
    if not fractions or fractions[-1] != 1.0 or any(not 0 < f <= 1 for f in fractions) \
            or any(finer <= coarser for coarser, finer in zip(fractions, fractions[1:])):
        raise UserError(f"scales must rise to 1 (the output size), each fraction once, e.g. 0.25,0.5,1; got "
                        f"{','.join(f'{f:.12g}' for f in fractions)}")
    if any(count is not None and count < 1 for _, count in settings.scales):
        raise UserError("each scale needs a positive number of iterations")
    if settings.style_scale <= 0:
        raise UserError(f"style scale must be positive, not {settings.style_scale}")
    if not 0.0 <= settings.noise_ratio <= 1.0:
        raise UserError(f"noise ratio must be between 0 and 1, not {settings.noise_ratio}")
    if not settings.learning_rate > 0 or not np.isfinite(settings.learning_rate):
        raise UserError(f"learning rate must be positive and finite, not {settings.learning_rate}")
    for value, what in ((settings.content_weight, "content weight"), (settings.style_weight, "style weight"),
                        (settings.tv_weight, "TV weight"), (settings.style_scale, "style scale"),
                        (settings.noise_ratio, "noise ratio")):
        if not np.isfinite(value) or value < 0:
            raise UserError(f"the {what} must be finite and not negative, not {value}")
    for layers, what in ((settings.content_layers, "content"), (settings.style_layers, "style")):
        for name, weight in layers.items():
            if not np.isfinite(weight) or weight < 0:
                raise UserError(f"{what} layer {name}'s weight must be finite and not negative, not {weight}")
    if settings.seed is not None and not 0 <= settings.seed < 2 ** 32:
        raise UserError(f"the seed must be a whole number from 0 to 4294967295, not {settings.seed}")
    if settings.loss_units not in LOSS_UNITS:
        raise UserError(f"loss units must be one of {', '.join(LOSS_UNITS)}, not '{settings.loss_units}'")
    if not 0.0 <= settings.adam_beta1 < 1.0:
        raise UserError(f"Adam's beta1 must be at least 0 and below 1, not {settings.adam_beta1}")
    if not 0 < settings.adam_epsilon < np.inf:
        raise UserError(f"Adam's epsilon must be positive and finite, not {settings.adam_epsilon}")
    if settings.lbfgs_round is not None and settings.lbfgs_round < 1:
        raise UserError(f"L-BFGS round must be a positive number of evaluations, not {settings.lbfgs_round}")
    if settings.optimizer == "lbfgs" and settings.lbfgs_impl == "tf" and (
            settings.lbfgs_round is not None or not settings.clip_image or settings.writeup_exact):
        raise UserError("--lbfgs-impl tf keeps the image in 0..255 and its history for the whole run; for "
                        "--lbfgs-round, --no-clip-image or --writeup-exact use --lbfgs-impl scipy")
    balance = settings.balance
    if balance not in BALANCES and not (isinstance(balance, (int, float)) and np.isfinite(balance)
                                        and balance > 0):
        raise UserError(f"balance must be auto, off or a positive number, not '{balance}'")
    if not settings.content_layers or not settings.style_layers:
        raise UserError("give at least one content layer and one style layer")
    if settings.color_control not in COLOR_CONTROLS:
        raise UserError(f"colour control must be one of {', '.join(COLOR_CONTROLS)}, not "
                        f"'{settings.color_control}'")
    sets = settings.style_layer_sets
    if sets is not None:
        if len(sets) != style_count:
            raise UserError(f"{len(sets)} style layer sets given for {style_count} style "
                            f"image{'s' if style_count > 1 else ''}: give one set per style image")
        for layer in (layer for layer_set in sets for layer in layer_set):
            if layer not in settings.style_layers:
                raise UserError(f"style layer set names {layer}, which is not one of the style layers "
                                f"({', '.join(settings.style_layers)})")
        unused = [layer for layer in settings.style_layers if not any(layer in s for s in sets)]
        if unused:
            raise UserError(f"style layer {unused[0]} is in no style layer set; add it to one")
    blend = settings.style_blend_weights
    if blend is not None:
        if len(blend) != style_count:
            raise UserError(f"{len(blend)} style blend weights given for {style_count} style "
                            f"image{'s' if style_count > 1 else ''}: give one weight per style image")
        if any(not np.isfinite(w) or w < 0 for w in blend) or sum(blend) <= 0:
            raise UserError("style blend weights must be finite, non-negative and not all zero")
    # Every style layer is fed by the styles whose layer set names it: some must weigh more than 0.
    weights = blend or [1.0] * style_count
    layer_sets = sets or [list(settings.style_layers)] * style_count
    if not any(weights[i] > 0 for layer in settings.style_layers for i, layer_set in enumerate(layer_sets)
               if layer in layer_set):
        raise UserError("the style objective is empty: every style layer belongs only to styles whose "
                        "blend weight is 0; give one of them a positive --style-blend-weights value")


def _check_masks(masks, style_count):
    if masks is not None and len(masks) != style_count:
        raise UserError(f"{len(masks)} style masks given for {style_count} style "
                        f"image{'s' if style_count > 1 else ''}: give one mask per style image")


def _check_size(what, image, vgg):
    vgg.check_size(what, *image.shape[:2], "use a larger image, a larger --max-size or --style-scale, "
                   "or shallower layers")
