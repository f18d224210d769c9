"""Neural style transfer by image optimisation (Gatys, Ecker & Bethge 2015/2016).

    python neural_style.py --content photo.jpg --style painting.jpg --output result.png

Presets: writeup (default: the course write-up's TF reproduction, corrected; --writeup-exact for its
code to the letter), gatys2016 (the CVPR paper), keras (the Keras example), tf-tutorial (the
TensorFlow tutorial) and fast (everyday use); every option below overrides its preset. Layer names are the .mat file's own: relu4_2 is the
output of conv4_2 after its ReLU.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import platform
import re
import sys
from pathlib import Path

import numpy as np

import cli
import files
import progress
from errors import UserError
from presets import (COLOR_CONTROLS, INITS, OPTIMIZERS, POOLINGS, PRECISIONS, PRESETS,
                     balance_value, parse_layers, parse_scales, settings_for_preset)

def parse_args(argv):
    return build_parser().parse_args(argv)


def build_parser():
    """The command line's options; studio.py builds its runs with the same parser."""
    parser = cli.ArgumentParser(
        prog="neural_style.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="Each option left out takes the preset's value; see docs/neural_style.md for the presets.")
    io = parser.add_argument_group("images")
    io.add_argument("--content", required=True, type=Path, help="the photo to render")
    io.add_argument("--style", required=True, type=Path, nargs="+", help="one or more style images")
    io.add_argument("--output", required=True, type=Path, help="where to write the result (.png, .jpg)")
    io.add_argument("--overwrite", action="store_true", help="replace --output (and --progress-file, the loss plot) if it exists")
    io.add_argument("--max-size", type=cli.positive_int, help="long side of the output in px; a larger content image "
                    "is scaled down (default 512)")
    io.add_argument("--style-scale", type=cli.positive_float, default=1.0, help="style image long side relative to "
                    "the output's (default 1.0)")
    io.add_argument("--style-blend-weights", type=cli.nonnegative_float, nargs="+",
                    help="one weight per style image (normalised to sum 1; default equal)")
    io.add_argument("--preserve-colors", action="store_true",
                    help="luminance-only transfer: keep the content's colours (= --color-control luminance)")
    io.add_argument("--color-control", choices=COLOR_CONTROLS,
                    help="Gatys et al. 2017: luminance-only transfer, or match the style's colour "
                    "histogram (mean and covariance) to the content's first")
    io.add_argument("--style-mask", type=Path, nargs="+", help="one grayscale image per style: each style "
                    "applies where its mask is white (guided Gram matrices, Gatys et al. 2017)")
    io.add_argument("--style-layer-sets", nargs="+", help="one comma-separated subset of --style-layers per "
                    "style image, e.g. relu1_1,relu2_1 relu3_1,relu4_1,relu5_1: the fine scale of the "
                    "first style with the coarse scale of the second")
    loss = parser.add_argument_group("objective")
    loss.add_argument("--preset", choices=sorted(PRESETS), default="writeup",
                      help="writeup (default: the course write-up), gatys2016 (the CVPR paper), keras "
                      "(keras/examples/neural_style_transfer.py), tf-tutorial (the TensorFlow tutorial) or "
                      "fast (the write-up's objective, reached quickly: everyday use)")
    loss.add_argument("--writeup-exact", action="store_true",
                      help="the write-up's code to the letter, mistakes included (double mean subtraction "
                      "with BGR, style stretched to the content's size, native size, truncation, a JPEG "
                      "every 100 iterations); only with --preset writeup")
    loss.add_argument("--network", type=Path, help="the MatConvNet VGG .mat file (default: "
                      "weights/imagenet-vgg-verydeep-19.mat, downloaded on first use)")
    loss.add_argument("--normalize-network", action=argparse.BooleanOptionalAction,
                      help="rescale the weights so every channel's mean activation is 1, as the paper's "
                      "network (on in gatys2016)")
    loss.add_argument("--content-layers", help="comma-separated layer names, each optionally name:weight")
    loss.add_argument("--style-layers", help="comma-separated, e.g. relu1_1:0.5,relu2_1:1.0 (a layer "
                      "without a weight gets 1/number of style layers)")
    loss.add_argument("--content-weight", type=cli.nonnegative_float, help="alpha")
    loss.add_argument("--style-weight", type=cli.nonnegative_float, help="beta")
    loss.add_argument("--tv-weight", type=cli.nonnegative_float, help="total variation weight")
    loss.add_argument("--pooling", choices=POOLINGS, help="replace max pooling by average pooling")
    loss.add_argument("--loss-units", choices=("printed", "authors", "keras", "tf-tutorial"),
                      help="whose loss formulas: the paper's printed sums (writeup, fast), the authors' "
                      "means, in which alpha/beta means the same at every size (gatys2016), the Keras "
                      "example's or the TF tutorial's (see docs/neural_style.md)")
    loss.add_argument("--balance", type=balance_value, help="auto: rescale beta so that alpha/beta "
                      "balances the gradients as on the paper's network (fast); off; or the factor")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=OPTIMIZERS)
    opt.add_argument("--iterations", type=cli.positive_int, help="Adam steps, or L-BFGS loss evaluations")
    opt.add_argument("--learning-rate", type=cli.positive_float, help="Adam's step size")
    opt.add_argument("--adam-beta1", type=float, help="Adam's beta1, at least 0 and below 1 (default 0.9; "
                     "tf-tutorial 0.99)")
    opt.add_argument("--adam-epsilon", type=cli.positive_float, help="Adam's epsilon, outside the square "
                     "root, in pixel values 0..255 (default 1e-8; tf-tutorial 0.1/255)")
    opt.add_argument("--lbfgs-round", type=cli.positive_int, help="L-BFGS evaluations before its history "
                     "is dropped and it starts afresh (keras: 20; default never)")
    opt.add_argument("--clip-image", action=argparse.BooleanOptionalAction,
                     help="keep the image in 0..255 while optimising (default on; off in keras, whose "
                     "L-BFGS was unbounded)")
    opt.add_argument("--init", choices=INITS,
                     help="blend: noise mixed with the content (write-up); noise: white noise")
    opt.add_argument("--init-image", type=Path, help="start from this image (implies --init image)")
    opt.add_argument("--noise-ratio", type=float, help="share of noise in the blend init (0..1)")
    opt.add_argument("--seed", type=cli.seed, help="random seed, for repeatable runs")
    opt.add_argument("--scales", help="coarse to fine: fractions of the output size, each optionally "
                     "fraction:iterations, ending with 1, e.g. 0.25:150,0.5:100,1")
    opt.add_argument("--precision", choices=PRECISIONS,
                     help="arithmetic of the network (losses stay float32); auto: bfloat16 on a CPU "
                     "with native bfloat16, bfloat16 on a GPU of compute capability >= 8, float16 on older GPUs, else "
                     "float32")
    opt.add_argument("--lbfgs-impl", choices=("tf", "scipy"),
                     help="L-BFGS implementation: tf, lbfgs.py on the device (default), or scipy's L-BFGS-B "
                     "on the host (keras: the only one that runs unbounded and in rounds)")
    opt.add_argument("--lbfgs-preconditioned", action=argparse.BooleanOptionalAction,
                     help="lbfgs.py's initial matrix weighs the image's long waves and quiet pixels up: "
                     "fewer evaluations from the content (default on in fast, off elsewhere: from white "
                     "noise, texture drifts into broad blobs)")
    opt.add_argument("--recompute", choices=("auto", "on", "off"), default="auto",
                     help="recompute activations in the backward pass to save memory (auto: when "
                     "they would not fit)")
    out = parser.add_argument_group("progress")
    out.add_argument("--print-every", type=cli.positive_int, default=100, help="keep a progress line every N iterations")
    out.add_argument("--snapshot-every", type=cli.nonnegative_int, default=0,
                     help="also save the image every N iterations as OUTPUT_00100.png, ...")
    out.add_argument("--checkpoint-every", dest="snapshot_every", type=int, default=0,
                     help=argparse.SUPPRESS)  # its old name; fast_style.py's checkpoints are TF's
    out.add_argument("--progress-file", type=Path, help="write one JSON line of losses per iteration")
    out.add_argument("--progress-plot", action="store_true", help="draw the loss terms per iteration "
                     "(log scale) as OUTPUT.losses.png, refreshed every --print-every iterations")
    return parser


def settings_from(args):
    """The preset's values, overridden by every option the user gave; and the output's long side."""
    from stylize import Settings
    preset = PRESETS[args.preset]
    # Every setting is an option of the same name (None: not given), whether or not the preset
    # states it: a preset that leaves one at Settings' default still takes the user's value.
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(Settings)}
    if args.content_layers is not None:
        given["content_layers"] = parse_layers(args.content_layers, "--content-layers", style=False)
    if args.style_layers is not None:
        given["style_layers"] = parse_layers(args.style_layers, "--style-layers", style=True)
    if args.scales is not None:
        given["scales"] = parse_scales(args.scales)
    max_size = preset["max_size"] if args.max_size is None else args.max_size
    if args.init_image is not None and args.init is None:
        given["init"] = "image"
    if args.writeup_exact and args.preset != "writeup":
        raise UserError(f"--writeup-exact reproduces the write-up's code; it cannot be combined with "
                        f"--preset {args.preset}")
    if args.writeup_exact and args.max_size is not None:
        raise UserError("--writeup-exact uses the content at its native size, as the write-up did; "
                        "leave out --max-size (resize the photo itself instead)")
    if args.preserve_colors and args.color_control not in (None, "luminance"):
        raise UserError("--preserve-colors is luminance-only transfer; it cannot be combined with "
                        f"--color-control {args.color_control}")
    given["color_control"] = "luminance" if args.preserve_colors else args.color_control
    given["style_layer_sets"] = args.style_layer_sets and [
        [name.strip() for name in spec.split(",") if name.strip()] for spec in args.style_layer_sets]
    given["recompute"] = {"auto": "auto", "on": True, "off": False}[args.recompute]
    given["writeup_exact"] = args.writeup_exact or None
    settings = settings_for_preset(args.preset, **given)
    check_optimizer_options(args, settings)
    return settings, max_size


# The options of one optimiser (and implementation: None, either), as (optimizer, lbfgs_impl).
OPTIMIZER_OPTIONS = {"learning_rate": ("adam", None), "adam_beta1": ("adam", None),
                     "adam_epsilon": ("adam", None), "lbfgs_impl": ("lbfgs", None),
                     "lbfgs_round": ("lbfgs", "scipy"), "lbfgs_preconditioned": ("lbfgs", "tf")}
OPTIMIZER_NAMES = {("adam", None): "Adam", ("lbfgs", None): "L-BFGS", ("lbfgs", "tf"): "lbfgs.py's L-BFGS",
                   ("lbfgs", "scipy"): "scipy's L-BFGS-B"}


def check_optimizer_options(args, settings):
    """An option the user named for an optimiser the run does not use would do nothing: refused.
    Only options given by name (a preset's own values are not the user asking), and a flag only when
    on (--no-lbfgs-preconditioned with Adam asks for nothing)."""
    for name, (optimizer, impl) in OPTIMIZER_OPTIONS.items():
        value = getattr(args, name)
        if value is None or value is False:
            continue
        if settings.optimizer != optimizer or impl not in (None, settings.lbfgs_impl):
            used = (settings.optimizer, settings.lbfgs_impl if settings.optimizer == "lbfgs" else None)
            needs = ([f"--optimizer {optimizer}"] if settings.optimizer != optimizer else []) + \
                ([f"--lbfgs-impl {impl}"] if impl and settings.lbfgs_impl != impl else [])
            raise UserError(f"--{name.replace('_', '-')} is an option of {OPTIMIZER_NAMES[optimizer, impl]} and "
                            f"this run uses {OPTIMIZER_NAMES[used]}, so it would do nothing; use "
                            f"{' '.join(needs)}, or leave it out")


def plot_path(output):
    """Where --progress-plot draws: result.png -> result.losses.png."""
    return output.with_name(f"{output.stem}.losses.png")


def load_inputs(args, max_size):
    """The content and style images at the size the preset's source used: the content's long side
    capped at `max_size`; for keras, 400 px high and the style stretched to the content's size (both
    nearest neighbour, as its load_img(target_size) did); with --writeup-exact the content as it is
    (stylize stretches the styles to it). Before TensorFlow's first operation, it picks the memory
    allocator for that output size (stylize.use_returning_allocator)."""
    import images
    from stylize import use_returning_allocator
    preset = PRESETS[args.preset]
    content = images.load_image(args.content, "content image")
    styles = [images.load_image(path, "style image") for path in args.style]
    rows, cols = content.shape[:2]
    height = preset.get("height") if args.max_size is None else None
    if args.writeup_exact:
        size = (rows, cols)
    elif height:
        size = (height, max(1, int(cols * height / rows)))
    else:
        size = images.capped_size(content.shape, max_size)
    use_returning_allocator(*size)  # before the resize, TensorFlow's first operation
    if args.writeup_exact:
        return content, styles
    content = images.resize_nearest(content, *size) if height else images.resize(content, *size)
    if preset.get("style_at_content_size"):
        styles = [images.resize_nearest(style, *content.shape[:2]) for style in styles]
    return content, styles


class Monitor:
    """Shows progress, writes the progress file, the snapshots and the loss plot, and relays a stop
    request."""

    def __init__(self, args, settings, stop_request):
        self.args, self.settings, self.stop_request = args, settings, stop_request
        self.bar = progress.Bar(unit="iteration")
        self.log = None
        if args.progress_file:
            try:
                self.log = open(args.progress_file, "w", buffering=1)
            except OSError as error:
                self._warn(f"the progress file {args.progress_file} cannot be opened "
                           f"({files.describe(error)}); the run goes on without it")
        self.losses = {}  # iteration: (content, style, tv, total), for --progress-plot

    def plot(self):
        if not self.args.progress_plot or not self.losses:
            return
        import plots
        iterations = sorted(self.losses)
        columns = zip(*(self.losses[i] for i in iterations))
        plots.try_save_loss_plot(plot_path(self.args.output), iterations,
                                 dict(zip(("content", "style", "tv", "total"), columns)),
                                 f"{self.args.output.name}: the terms before their weights, and the total")

    def __call__(self, state):
        if self.log:
            try:
                self.log.write(json.dumps(state.as_record()) + "\n")
            except OSError as error:
                self._warn(f"writing the progress file {self.args.progress_file} failed "
                           f"({files.describe(error)}); it stops here and the run goes on")
                self._close_log()
        every = self.args.snapshot_every
        if every and state.iteration and state.iteration % every == 0:
            self._snapshot(snapshot_path(self.args.output, state.iteration), state)
        if self.settings.writeup_exact and state.iteration % 100 == 1:
            # The write-up saved a JPEG after the step of loop index i whenever i % 100 == 0.
            self._snapshot(snapshot_path(self.args.output, state.iteration - 1, writeup=True), state)
        text = (f"iteration {state.iteration}/{state.total_iterations}  content {state.content_loss:.4g}  "
                f"style {state.style_loss:.4g}  tv {state.tv_loss:.4g}  total {state.total_loss:.4g}")
        keep = state.iteration % self.args.print_every == 0 or state.iteration == state.total_iterations
        self.bar.update(state.iteration, text, keep, total=state.total_iterations, done=state.done)
        self.losses[state.iteration] = (state.content_loss, state.style_loss, state.tv_loss, state.total_loss)
        if keep:
            self.plot()
        return not self.stop_request.should_stop()  # stopping: a second Ctrl-C must not cut the save

    def _snapshot(self, path, state):
        """Save the current image as `path`; a failure is a warning, the run goes on."""
        import images
        try:
            images.save_image(path, state.image(), overwrite=self.args.overwrite)
        except OSError as error:
            self._warn(f"snapshot {path} could not be written ({files.describe(error)}); the run goes on")

    def _warn(self, text):
        self.bar.keep(f"warning: {text}")

    def _close_log(self):
        try:
            self.log.close()
        except OSError:
            pass
        self.log = None

    def close(self):
        self.plot()  # the last iterations, also of an interrupted run
        self.bar.close()
        if self.log:
            self._close_log()


def snapshot_path(output, iteration, writeup=False):
    """Where a snapshot goes: OUTPUT_00100.png (--snapshot-every), or the write-up's OUTPUT_100.jpg
    named by its loop index (--writeup-exact)."""
    return output.with_name(f"{output.stem}_{iteration}.jpg" if writeup else
                            f"{output.stem}_{iteration:05d}{output.suffix}")


def takes_a_snapshot_name(args, settings, path):
    """Whether one of this run's snapshots (OUTPUT_00100.png, ... every --snapshot-every iterations;
    the write-up's OUTPUT_0.jpg, OUTPUT_100.jpg, ... with --writeup-exact) would be written where
    `path` (links followed) is. Decided from the name, not by listing the snapshots: a run may ask
    for a billion iterations."""
    path, stem = Path(path).resolve(), args.output.stem
    match = re.fullmatch(re.escape(stem) + r"_(\d+)\..*", path.name)
    if not match or path.parent != args.output.parent.resolve():
        return False
    i, last, every = int(match[1]), settings.total_iterations(), args.snapshot_every
    return bool(every and 0 < i <= last and i % every == 0 and path.name == snapshot_path(args.output, i).name
                or settings.writeup_exact and 0 <= i < last and i % 100 == 0
                and path.name == snapshot_path(args.output, i, writeup=True).name)


def check_paths(args, settings):
    """The output names before the long work: free (or --overwrite), writable, apart, and never one
    of the inputs or the network (--overwrite would otherwise replace the user's photo with the
    result, or the weights with the progress file or a snapshot)."""
    import images
    images.check_writable(args.output, args.overwrite)
    record = args.output.with_suffix(".json")
    files.check_new(record, args.overwrite, "run record")
    written = {args.output: "the image", record: "the run's record"}
    if args.progress_plot:
        plot = plot_path(args.output)
        files.check_new(plot, args.overwrite, "loss plot")
        written[plot] = "the loss plot"
    if args.progress_file:
        if args.progress_file.is_dir():
            raise UserError(f"progress file {args.progress_file} is a folder; give a file name")
        files.check_new(args.progress_file, args.overwrite, "progress file")
        files.check_folder(args.progress_file, "progress file")
        for path, what in written.items():
            if args.progress_file.resolve() == path.resolve():
                raise UserError(f"--progress-file {args.progress_file} is where {what} goes; choose "
                                f"another name, e.g. {args.output.with_suffix('.jsonl')}")
        written[args.progress_file] = "the progress file"
    inputs = [args.content, *args.style, *(args.style_mask or []), *([args.init_image] if args.init_image else []),
              *([args.network] if args.network else [])]
    for output in written:
        for given in inputs:
            if output.exists() and given.exists() and os.path.samefile(output, given):
                raise UserError(f"{output} is one of the inputs ({given}); the run would replace it, "
                                f"so choose another name (even with --overwrite)")
    for given in inputs:  # without --overwrite a snapshot takes the next free name instead
        if args.overwrite and given.exists() and takes_a_snapshot_name(args, settings, given):
            raise UserError(f"{given} is one of the inputs and has the name of one of this run's snapshots, "
                            f"which would replace it; choose another --output name (even with --overwrite)")


def run(args):
    import images  # these import TensorFlow and SciPy: after argparse, so that --help is quick
    import vgg
    from stylize import check_inputs, stylize
    settings, max_size = settings_from(args)
    check_paths(args, settings)
    content, styles = load_inputs(args, max_size)
    init_image = images.load_image(args.init_image, "init image") if args.init_image else None
    masks = [images.load_mask(path) for path in args.style_mask] if args.style_mask else None
    check_inputs(settings, content, styles, init_image, masks)  # all that needs no network

    network = vgg.load(args.network if args.network else vgg.ensure_default())
    with progress.graceful_interrupt() as stop_request:
        monitor = Monitor(args, settings, stop_request)
        try:
            result = stylize(network, content, styles, settings, monitor, init_image, masks)
        finally:
            stop_request.shield()  # whatever happens next, a Ctrl-C does not stop the save
            monitor.close()
        if result.image is None:
            raise UserError("the loss is not finite at the starting image, so there is nothing to save; "
                            "check the loss weights and --learning-rate (a weight that is too large "
                            "overflows float32) or try --precision float32")
        saved, failure = images.save_result(args.output, result.image, overwrite=args.overwrite)
    if failure is None and saved != args.output:
        print(f"{args.output} appeared during the run, so the result went to {saved}", file=sys.stderr)
    try:  # beside the image, wherever it went: a fallback image keeps its settings too
        write_record(args, settings, network, result, saved)
    except OSError as error:
        failure = failure or files.describe(error)
        print(f"warning: the image is saved as {saved}, but its run record {Path(saved).with_suffix('.json')} "
              f"could not be written ({files.describe(error)})", file=sys.stderr)
    if result.status == "diverged":
        print(f"error: the loss stopped being finite after iteration {result.iterations}; the last "
              f"finite image is saved as {saved}. Lower --learning-rate or the loss weights.",
              file=sys.stderr)
        return 1
    if result.status == "interrupted":
        print(f"interrupted: the image at iteration {result.iterations} is saved as {saved}",
              file=sys.stderr)
        return 130
    if failure is not None:
        return 1  # a warning named where the finished image went
    print(f"saved {saved}")
    return 0


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_record(args, settings, network, result, saved):
    """OUTPUT.json beside the result: every option, the settings, the inputs' and the network's
    SHA-256, the versions, the loss units and the balance factor; written atomically."""
    import tensorflow
    inputs = {"content": args.content, "style": args.style, "init_image": args.init_image,
              "style_mask": args.style_mask}
    hashes = {name: ([file_sha256(p) for p in value] if isinstance(value, list) else file_sha256(value))
              for name, value in inputs.items() if value}
    record = {"options": {k: v for k, v in vars(args).items()},
              "settings": dataclasses.asdict(settings), "loss_units": settings.loss_units,
              "balance": settings.balance, "balance_factor": result.balance,
              "status": result.status, "iterations": result.iterations,
              "sha256": hashes, "network": network.path, "network_sha256": network.sha256,
              "versions": {"python": platform.python_version(), "tensorflow": tensorflow.__version__,
                           "numpy": np.__version__}}
    return files.write_json(Path(saved).with_suffix(".json"), record)


def main(argv=None):
    return cli.entry(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
