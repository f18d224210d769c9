"""Fast style transfer (Johnson, Alahi & Fei-Fei 2016): train a network for one style once, then
stylize images, folders and videos with one forward pass each.

    python fast_style.py train --style painting.jpg --data DIR --model out/
    python fast_style.py stylize --model out/ --input photo.jpg|DIR|video.mp4 --output ...
    python fast_style.py export --model out/
    python fast_style.py train ... --encoder vgg:relu3_1 --stage1-steps N --stage2-steps M
    python fast_style.py study-digits --style painting.jpg --out study/

This is the command line; fast_train.py trains, fast_apply.py uses a trained network.
"""
import argparse
import os
import sys
from pathlib import Path

import cli
import progress
from errors import UserError
from presets import PRECISIONS, parse_layers

# The options that define a training: --resume takes them from the model folder.
DEFINING = ("style", "data", "network", "variant", "widths", "content_layers", "style_layers",
            "content_weight", "style_weight", "pixel_weight", "tv_weight", "image_size", "style_size",
            "batch_size", "learning_rate", "seed", "encoder", "stage1_steps", "stage2_steps",
            "stage2_learning_rate", "identity_start")
# Those of the digits study: --resume takes them from its folder. It runs both schedules for each of
# several seeds instead of one.
STUDY_DEFINING = tuple(name for name in DEFINING if name not in ("data", "seed")) + (
    "mnist", "digits", "held_out", "seeds")
# Chosen by measurement (docs/two_stage.md, "Choosing the defaults"): on VGG16, the stylized digits
# stay readable in the painting's colours, and the whole study fits in 20 minutes on two CPU cores.
# The painting at 64 px has strokes of a digit's scale; the style layers stop at relu3_3 (8x8 maps at
# 32 px), where relu4_3's 4x4 maps hold no texture, and keep train's 1/C^2 weighting (STUDY_STYLE_LAYERS).
# The generator starts as the identity: from Glorot's noise most seeds went flat white in their first
# 10 steps and lost hundreds of steps coming back. So started, every seed stays readable at style
# weight 12000, where the style term falls below that of the painting's own 32 px crops.
STUDY_DEFAULTS = {"image_size": 32, "style_size": 64, "style_weight": 12000.0, "tv_weight": 1e-4,
                  "encoder": "vgg:relu3_1", "stage1_steps": 800, "stage2_steps": 300, "seeds": (0, 1, 2),
                  "identity_start": True}
STUDY_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3")


def parse_args(argv):
    parser = cli.ArgumentParser(prog="fast_style.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See docs/fast_style.md for the defaults and the model folder.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a network for one style into a model folder")
    train.add_argument("--model", required=True, type=Path, help="the model folder to write")
    train.add_argument("--style", type=Path, help="the style image")
    train.add_argument("--data", type=Path, help="a folder of training images (e.g. COCO 2014 train)")
    train.add_argument("--network", type=Path, help="the VGG .mat file (default: "
                       "weights/imagenet-vgg-verydeep-19.mat, downloaded on first use)")
    train.add_argument("--resume", action="store_true", help="continue the training in --model")
    train.add_argument("--overwrite", action="store_true", help="start over in a --model folder that "
                       "already holds a training")
    length = train.add_argument_group("length")
    length.add_argument("--epochs", type=cli.positive_int, help="passes over the data (default 2)")
    length.add_argument("--steps", type=cli.positive_int, help="total training steps (overrides --epochs)")
    _add_recipe(train.add_argument_group("recipe (defaults: Johnson et al. for VGG16, lengstrom's for "
                                         "VGG19)"), image_size=256)
    _add_schedule(train.add_argument_group("two-stage schedule (a generator that shares VGG's first "
                                           "layers; the two stages set the length)"))
    run = _add_run(train.add_argument_group("run"))
    run.add_argument("--devices", type=cli.device_list, help="comma-separated devices for MirroredStrategy, e.g. "
                     "/gpu:0,/gpu:1 (default: all GPUs when there are several)")

    stylize = commands.add_parser("stylize", help="stylize an image, a folder of images or a video")
    stylize.add_argument("--model", required=True, type=Path, help="a trained model folder")
    stylize.add_argument("--input", required=True, type=Path, help="an image, a folder or a video")
    stylize.add_argument("--output", required=True, type=Path, help="an image, a folder or a video")
    stylize.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    stylize.add_argument("--preserve-colors", action="store_true", help="keep the input's colours")
    stylize.add_argument("--batch-size", type=cli.positive_int, default=4, help="images or frames per pass")
    stylize.add_argument("--precision", choices=PRECISIONS, default="float32",
                         help="the network's arithmetic (default float32: the exported network); a "
                         "reduced one rebuilds it from the model folder's checkpoint. auto: bfloat16 on "
                         "a CPU with native bfloat16, float16 on a GPU, else float32")

    export = commands.add_parser("export", help="write saved_model/ and model.tflite from the latest "
                                 "checkpoint")
    export.add_argument("--model", required=True, type=Path, help="a model folder")

    study = commands.add_parser("study-digits", help="train on handwritten digits with and without stage "
                                "2 and compare (the two-stage schedule's worked example)",
                                epilog="The study's own defaults (chosen on VGG16, docs/two_stage.md): " + " ".join(
                                    _shown(name, value) for name, value in STUDY_DEFAULTS.items()) + " --style-layers "
                                f"{','.join(STUDY_STYLE_LAYERS)}, each weighted 1/C^2 (C: its channels) as "
                                "train's own layers")
    study.add_argument("--out", required=True, type=Path, help="the study folder to write")
    study.add_argument("--style", type=Path, help="the style image")
    study.add_argument("--mnist", type=Path, help="MNIST as a local .npz (Keras' mnist.npz) or IDX file "
                       "(train-images-idx3-ubyte[.gz]); default: scikit-learn's 8x8 digits, upscaled")
    study.add_argument("--digits", type=cli.positive_int, help="how many digits to train on (default 1000)")
    study.add_argument("--held-out", type=cli.positive_int, help="how many other digits to measure the networks on "
                       "(default 200)")
    study.add_argument("--seeds", help="comma-separated seeds; both runs are trained for each (default "
                       f"{','.join(map(str, STUDY_DEFAULTS['seeds']))})")
    study.add_argument("--network", type=Path, help="the VGG .mat file (as for train)")
    study.add_argument("--resume", action="store_true", help="continue the study in --out")
    study.add_argument("--overwrite", action="store_true", help="start over in an --out folder that "
                       "already holds a study")
    _add_recipe(study.add_argument_group("recipe (as for train)"), image_size=STUDY_DEFAULTS["image_size"],
                style_size=STUDY_DEFAULTS["style_size"], seed=False,
                identity_start=STUDY_DEFAULTS["identity_start"])
    _add_schedule(study.add_argument_group("schedule: run A trains stage 1 for N + M steps, run B stage 1 "
                                           "for N, then stage 2 for M"), STUDY_DEFAULTS)
    _add_run(study.add_argument_group("run"))
    return parser.parse_args(argv)


def _shown(name, value):
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return option if value else option.replace("--", "--no-", 1)
    return f"{option} {','.join(map(str, value)) if isinstance(value, tuple) else value}"


def _add_recipe(group, image_size, style_size="--image-size", seed=True, identity_start=False):
    group.add_argument("--variant", choices=("improved", "paper"), help="improved (default): instance "
                       "norm, resize-convolution, reflection padding; paper: batch norm, transposed "
                       "convolution, zero padding")
    group.add_argument("--widths", help="channels at full, half and quarter size (default 32,64,128)")
    group.add_argument("--content-layers", help="comma-separated, each optionally name:weight")
    group.add_argument("--style-layers", help="comma-separated, each optionally name:weight (a layer "
                       "without a weight gets 1/number of style layers)")
    group.add_argument("--content-weight", type=cli.nonnegative_float, help="default 1 (VGG16), 7.5 (VGG19)")
    group.add_argument("--style-weight", type=cli.nonnegative_float, help="default 5 (VGG16), 100 (VGG19)")
    group.add_argument("--pixel-weight", type=cli.nonnegative_float, help="weight of the pixel loss (default 0)")
    group.add_argument("--tv-weight", type=cli.nonnegative_float, help="total variation: default 0.4 (VGG16), 200 (VGG19)")
    group.add_argument("--image-size", type=cli.positive_int, help=f"side of the training images (default {image_size})")
    group.add_argument("--style-size", type=cli.positive_int, help=f"long side of the style image (default: "
                       f"{style_size})")
    group.add_argument("--batch-size", type=cli.positive_int, help="images per step, over all devices (default 4)")
    group.add_argument("--learning-rate", type=cli.positive_float, help="Adam's (default 1e-3)")
    group.add_argument("--identity-start", action=argparse.BooleanOptionalAction, help="the generator starts "
                       "as the identity (its output layer at zero, the input added before the tanh) instead "
                       f"of as noise (default: {'on' if identity_start else 'off'})")
    if seed:
        group.add_argument("--seed", type=cli.seed, help="initial weights, order of the data and crops (default 0)")


def _add_schedule(group, defaults=None):
    """--encoder and the stages; `defaults` only name the study's defaults in the help (they are
    applied where the options are read, so that --resume can tell an option given from one left out)."""
    defaults = defaults or {}
    encoder = defaults.get("encoder", "Johnson et al.'s 9x9 and two stride-2 convolutions")
    group.add_argument("--encoder", help="vgg:LAYER: the generator's encoder is a copy of the VGG's layers "
                       f"up to LAYER, initialised from the .mat, e.g. vgg:relu3_1 (default: {encoder})")
    group.add_argument("--stage1-steps", type=cli.nonnegative_int, help="N: steps with the shared layers fixed"
                       + (f" (default {defaults['stage1_steps']})" if defaults else ""))
    group.add_argument("--stage2-steps", type=cli.nonnegative_int, help="M: steps after them that train the shared layers "
                       "too" + (f" (default {defaults['stage2_steps']})" if defaults else ""))
    group.add_argument("--stage2-learning-rate", type=cli.positive_float, help="Adam's for the shared layers in stage 2 "
                       "(default 1e-4); the rest keeps --learning-rate")


def _add_run(group):
    group.add_argument("--checkpoint-every", type=cli.positive_int, default=500, help="save a checkpoint every N "
                       "steps (default 500)")
    group.add_argument("--preview-every", type=cli.positive_int, default=500, help="stylize the preview images every "
                       "N steps (default 500)")
    group.add_argument("--print-every", type=cli.positive_int, default=100, help="keep a progress line every N steps "
                       "(default 100)")
    return group


def given_settings(args, names):
    """{setting: value} of the options among `names` that were given, in the form Settings takes."""
    given = {}
    for name in names:
        value = getattr(args, name)
        if value is None:
            continue
        if name in ("style", "data", "network", "mnist"):
            value = str(value.resolve())
        elif name == "widths":
            value = parse_widths(value)
        elif name == "seeds":
            value = parse_seeds(value)
        elif name.endswith("_layers"):
            value = parse_layers(value, "--" + name.replace("_", "-"), style=name == "style_layers")
        given[name] = value
    return given


def settings_from(args):
    """The training's Settings: the model folder's with --resume, else the options given."""
    import fast_train
    given = given_settings(args, DEFINING)
    if args.resume:
        settings = fast_train.load_settings(args.model)
        for name, value in given.items():
            if value != getattr(settings, name):
                option = "--" + name.replace("_", "-")
                raise UserError(f"--resume continues the training in {args.model} as it was started, "
                                f"with {option} {getattr(settings, name)}, not {value}: drop {option} "
                                f"or train into another --model folder")
    else:
        for name in ("style", "data"):
            if name not in given:
                raise UserError(f"train needs --{name} (or --resume to continue a training)")
        if "network" not in given:
            import vgg
            given["network"] = str(vgg.ensure_default().resolve())
        if "stage1_steps" in given or "stage2_steps" in given:  # one stage given: the other is 0 steps
            given = {"stage1_steps": 0, "stage2_steps": 0, **given}
        settings = fast_train.Settings(**given)
    if args.epochs is not None:
        if settings.stage1_steps is not None:
            raise UserError(f"--stage1-steps {settings.stage1_steps} and --stage2-steps "
                            f"{settings.stage2_steps} set the length: drop --epochs")
        settings.epochs, settings.steps = args.epochs, None
    if args.steps is not None:
        settings.steps = args.steps
    return settings


def parse_widths(text):
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--widths takes three channel counts such as 32,64,128, not '{text}'") from None


def parse_seeds(text):
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--seeds takes numbers such as 0,1,2, not '{text}'") from None


def run_train(args):
    import fast_train
    import vgg
    settings = settings_from(args)
    network = vgg.load(settings.network)
    settings = settings.with_defaults(network)
    bar = progress.Bar(unit="step")
    with progress.graceful_interrupt() as stop_request:
        try:
            result = fast_train.train(settings, args.model, network, resume=args.resume,
                                       overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                                       preview_every=args.preview_every,
                                       print_every=args.print_every, devices=args.devices,
                                       stop=lambda: bool(stop_request), report=bar.report)
        finally:
            bar.close()
    if result.unreadable:
        print(f"skipped {result.unreadable} unreadable image files in {settings.data}", file=sys.stderr)
    checkpoints = args.model / fast_train.CHECKPOINTS
    if result.status == "diverged":
        print(f"error: the loss stopped being finite at step {result.step + 1}; the last checkpoint in "
              f"{checkpoints} is kept. Lower --learning-rate or the loss weights.", file=sys.stderr)
        return 1
    if result.status == "interrupted":
        print(f"interrupted: step {result.step} is saved in {checkpoints}; continue with `fast_style.py "
              f"train --model {args.model} --resume`, or export it with `fast_style.py export --model "
              f"{args.model}`", file=sys.stderr)
        return 130
    if result.exported:
        print(f"trained {result.step} steps; exported {args.model / fast_train.SAVED_MODEL} and "
              f"{args.model / fast_train.TFLITE_FILE}")
    else:
        print(f"trained {result.step} steps; worker 0 writes {args.model}")
    return 0


def run_stylize(args):
    import fast_apply
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive number, not {args.batch_size}")
    source, output = args.input, args.output
    if not source.exists():
        raise UserError(f"input {source} does not exist")
    is_video = source.is_file() and source.suffix.lower() in fast_apply.VIDEO_EXTENSIONS
    if output.exists() and source.exists() and os.path.samefile(source, output):
        raise UserError(f"--output {output} is the input; the result would replace it, so choose "
                        f"another name (even with --overwrite)")
    if source.is_dir():
        if output.exists() and not output.is_dir():
            raise UserError(f"--output {output} is a file; a folder input needs an output folder")
    elif not is_video:
        import images
        images.check_writable(output, args.overwrite)
    stylizer = fast_apply.Stylizer(args.model, args.precision)
    bar = progress.Bar(unit="image")
    try:
        if source.is_dir():
            written, skipped = fast_apply.stylize_folder(
                stylizer, source, output, args.batch_size, args.overwrite, args.preserve_colors, bar.report)
            bar.close()
            for reason in skipped:
                print(f"skipped: {reason}", file=sys.stderr)
            print(f"stylized {written} images into {output}")
        elif is_video:
            try:
                count, written = fast_apply.stylize_video(stylizer, source, output, args.batch_size,
                                                          args.overwrite, args.preserve_colors, bar.report)
            except fast_apply.TruncatedVideo as short:
                bar.close()
                print(f"warning: {source} ended after {short.count} of the {short.expected} frames its "
                      f"header promises (a truncated file?); {short.path} holds those {short.count}",
                      file=sys.stderr)
                return 1
            bar.close()
            if written != output:
                return 1  # the warning said where the video went
            print(f"stylized {count} frames into {output}")
        else:
            saved, failure = fast_apply.stylize_image(stylizer, source, output, args.overwrite,
                                                       args.preserve_colors)
            if failure is not None:
                return 1  # the warning said where the image went
            print(f"saved {saved}")
    finally:
        bar.close()
    if stylizer.reduced:
        print("some images were too large for memory and were stylized at a reduced size",
              file=sys.stderr)
    return 0


def run_study(args):
    import digits
    import fast_train
    import vgg
    given = given_settings(args, STUDY_DEFINING)
    if args.resume:
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UserError(f"--resume continues the study in {args.out} as it was started: drop {options}")
        study = digits.load_study(args.out)
    else:
        if "style" not in given:
            raise UserError("study-digits needs --style (or --resume to continue a study)")
        if "network" not in given:
            given["network"] = str(vgg.ensure_default().resolve())
        values = {**STUDY_DEFAULTS, **given}
        stages = values.pop("stage1_steps"), values.pop("stage2_steps")
        shape = {name: values.pop(name) for name in ("seeds", "mnist", "digits", "held_out") if name in values}
        settings = fast_train.Settings(data=str((args.out / digits.DATA).resolve()), **values)
        study = digits.Study(settings, *stages, **shape)
    network = vgg.load(study.settings.network)
    if study.settings.style_layers is None:
        study.settings.style_layers = fast_train.channel_weighted(network, STUDY_STYLE_LAYERS)
    study.settings = study.settings.with_defaults(network)
    bar = progress.Bar(unit="step")
    with progress.graceful_interrupt() as stop_request:
        try:
            result = digits.run_study(args.out, study, network, resume=args.resume, overwrite=args.overwrite,
                                      checkpoint_every=args.checkpoint_every,
                                      preview_every=args.preview_every, print_every=args.print_every,
                                      stop=lambda: bool(stop_request), report=bar.report)
        finally:
            bar.close()
    which = f"run {result.run} of seed {result.seed}"
    if result.status == "diverged":
        print(f"error: the loss of {which} stopped being finite at step {result.step + 1}. Lower "
              f"--learning-rate, --stage2-learning-rate or the loss weights.", file=sys.stderr)
        return 1
    if result.status == "interrupted":
        print(f"interrupted: {which} is saved at step {result.step}; continue with `fast_style.py "
              f"study-digits --out {args.out} --resume`", file=sys.stderr)
        return 130
    for line in digits.summary_lines(result.report):
        print(line)
    written = (digits.REPORT, digits.COMPARISON, digits.LOSS_PLOT, digits.LOSS_NUMBERS)
    print(f"wrote {', '.join(str(args.out / name) for name in written)}")
    return 0


def run_export(args):
    import fast_apply
    saved, tflite = fast_apply.export(args.model)
    print(f"exported {saved} and {tflite}")
    return 0


def main(argv=None):
    def body():
        args = parse_args(argv)
        return {"train": run_train, "stylize": run_stylize, "export": run_export,
                "study-digits": run_study}[args.command](args)
    return cli.entry(body)


if __name__ == "__main__":
    sys.exit(main())
