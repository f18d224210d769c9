"""The recipes: each preset's values in one place, and the grammar of layer lists and scales.

A preset is a dict of `stylize.Settings` fields plus how the images are sized (IMAGE_SIZING: `max_size`,
the output's long side; optionally `height`, an exact output height, and `style_at_content_size`). The
command line, `figures.py`, the benchmark and `stylize.Settings`' own defaults (the write-up) all
read them from here, so a value is stated once. Layer names are the .mat file's own: relu4_2 is the
output of conv4_2 after its ReLU.
"""
import argparse
import math

from errors import UserError

# The choices of the options, stated once for argparse and for the checks of the code that runs them.
INITS = ("blend", "noise", "content", "style", "image")
COLOR_CONTROLS = ("none", "luminance", "histogram")
OPTIMIZERS = ("adam", "lbfgs")
POOLINGS = ("avg", "max")
PRECISIONS = ("float32", "bfloat16", "float16", "auto")


def parse_layers(spec, option, style):
    """'relu1_1:0.5,relu2_1' -> {'relu1_1': 0.5, 'relu2_1': ...}; an omitted weight is 1 for content
    layers and 1/n for n style layers (the paper's w_l)."""
    names = [item.strip() for item in spec.split(",") if item.strip()]
    if not names:
        raise UserError(f"{option} is empty; give layer names such as relu4_2")
    default = 1.0 / len(names) if style else 1.0
    layers = {}
    for item in names:
        name, _, weight = item.partition(":")
        name = name.strip()
        if name in layers:
            raise UserError(f"{option} names {name} twice; give each layer once (with one weight)")
        try:
            layers[name] = float(weight) if weight else default
        except ValueError:
            raise UserError(f"{option}: '{weight}' in '{item}' is not a number; write name:weight, "
                            f"e.g. relu1_1:0.5") from None
        if not math.isfinite(layers[name]) or layers[name] < 0:
            raise UserError(f"{option}: the weight of {name} must be a finite number, 0 or more, not "
                            f"{weight.strip()}")
    return layers


def balance_value(text):
    """--balance: auto, off or a positive finite factor (an argparse type)."""
    if text in ("auto", "off"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not auto, off or a positive number")
    return value


def parse_scales(spec):
    """'0.25:300,0.5,1' -> ((0.25, 300), (0.5, None), (1.0, None)); None means --iterations."""
    scales = []
    items = [part.strip() for part in spec.split(",")]
    if spec.strip() and not all(items):  # '0.5,,1': a fraction left out, not something to guess
        raise UserError(f"--scales '{spec}' has an empty entry; give fractions separated by single commas, "
                        f"e.g. 0.5,1")
    for item in filter(None, items):
        fraction, _, count = item.partition(":")
        try:
            scales.append((float(fraction), int(count) if count else None))
        except ValueError:
            raise UserError(f"--scales: '{item}' is not fraction[:iterations], e.g. 0.5:200") from None
    if not scales:
        raise UserError("--scales is empty; give fractions of the output size ending with 1, e.g. 0.5,1")
    return tuple(scales)


IMAGE_SIZING = ("max_size", "height", "style_at_content_size")
RELU_1 = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

PRESETS = {
    # The course write-up's TF reproduction (see docs/neural_style.md, "Deviations").
    "writeup": {
        "content_layers": {"relu5_2": 1.0},
        "style_layers": {"relu1_1": 0.5, "relu2_1": 1.0, "relu3_1": 1.5, "relu4_1": 3.0, "relu5_1": 4.0},
        "content_weight": 5.0, "style_weight": 100.0, "tv_weight": 0.0,
        "optimizer": "adam", "learning_rate": 2.0, "iterations": 3000, "scales": ((1.0, None),),
        "init": "blend", "noise_ratio": 0.75, "pooling": "avg", "max_size": 512,
        "precision": "float32", "normalize_network": False,
        "loss_units": "printed", "balance": "off",
    },
    # Gatys, Ecker & Bethge, CVPR 2016.
    "gatys2016": {
        "content_layers": {"relu4_2": 1.0},
        "style_layers": {name: 0.2 for name in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")},
        "content_weight": 1.0, "style_weight": 1000.0, "tv_weight": 0.0,  # alpha/beta = 1e-3
        "optimizer": "lbfgs", "learning_rate": 2.0, "iterations": 1000, "scales": ((1.0, None),),
        "init": "noise", "noise_ratio": 1.0, "pooling": "avg", "max_size": 512,
        "precision": "float32", "normalize_network": True,
        # The authors' means: alpha/beta then means the same at every output size.
        "loss_units": "authors", "balance": "off",
    },
}
# keras/examples/neural_style_transfer.py, VGG19 version (see docs/neural_style.md, "keras").
PRESETS["keras"] = {
    "content_layers": {"relu5_2": 1.0},  # block5_conv2
    "style_layers": {name: 1.0 / 5 for name in RELU_1},  # blockN_conv1, each style_weight / 5
    "content_weight": 0.025, "style_weight": 1.0, "tv_weight": 1.0,
    "loss_units": "keras",  # sum (F-P)^2; channels = 3, size = rows*cols; (dx^2 + dy^2)^1.25 TV
    # 10 calls of fmin_l_bfgs_b(maxfun=20), unbounded, from the content image.
    "optimizer": "lbfgs", "iterations": 200, "lbfgs_round": 20, "clip_image": False, "lbfgs_impl": "scipy",
    "scales": ((1.0, None),), "init": "content", "pooling": "max", "precision": "float32", "normalize_network": False,
    "max_size": None, "height": 400, "style_at_content_size": True,  # load_img(target_size=(400, ...))
}
# The TensorFlow tutorial "Neural style transfer" (Kandinsky example), its final run with the TV term.
# Its image is 0..1 and ours 0..255 (x255 = 255 x01): Adam on x255 with lr 255*0.02 and epsilon 0.1/255
# takes exactly the tutorial's steps (the gradient scales by 1/255, m by 1/255, sqrt(v) by 1/255).
PRESETS["tf-tutorial"] = {
    "content_layers": {"relu5_2": 1.0},  # block5_conv2
    "style_layers": {name: 1.0 / 5 for name in RELU_1},  # each weight / num_style_layers
    "content_weight": 1e4, "style_weight": 1e-2, "tv_weight": 30.0,
    "loss_units": "tf-tutorial",  # mean squared errors, Grams / positions, tf.image.total_variation on 0..1
    "optimizer": "adam", "learning_rate": 0.02 * 255, "adam_beta1": 0.99, "adam_epsilon": 0.1 / 255,
    "iterations": 1000, "clip_image": True,  # 10 epochs of 100 steps, clip_0_1 after each
    "scales": ((1.0, None),), "init": "content", "pooling": "max", "precision": "float32",
    "normalize_network": False, "max_size": 512,
}
# The everyday recipe: the write-up's objective, balanced on the network at hand (docs/neural_style.md,
# "Balance") so that the quick start gives a styled picture at any size and with any VGG, reached as
# fast as this project can. Measured (docs/speed.md, "The fast preset"): L-BFGS beat Adam; bfloat16
# (where the device has it) beat float32; from the content, 100 evaluations at half size and 60 at
# full size give a finished 512 px picture in about 55 plain float32 steps' time (600 at one scale
# took about 500). The half-size scale is for the look, not the objective: since lbfgs.py's
# initial matrix weighs long waves and quiet pixels up, one scale reaches a lower objective sooner,
# but paints the sky in fine strokes only; the half size keeps the painting's broad ones.
PRESETS["fast"] = dict(PRESETS["writeup"], optimizer="lbfgs", iterations=60, scales=((0.5, 100), (1.0, None)),
                       init="content", precision="auto", balance="auto", lbfgs_preconditioned=True)


def settings_for_preset(name, **overrides):
    """A preset's `stylize.Settings`, with `overrides` (None: keep the preset's value) replacing its
    values."""
    from stylize import Settings  # stylize reads its defaults from here
    values = dict(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    for key in IMAGE_SIZING:
        values.pop(key, None)
    return Settings(**values)
