"""Fast style transfer (Johnson, Alahi & Fei-Fei 2016): train a network for one style once, then
stylize images, folders and videos with one forward pass each.

    python fast_style.py train --style painting.jpg --data DIR --model out/
    python fast_style.py stylize --model out/ --input photo.jpg|DIR|video.mp4 --output ...
    python fast_style.py export --model out/
"""
import argparse
import sys
from pathlib import Path

import progress
from errors import UserError
from vgg import parse_layers

# The options that define a training: --resume takes them from the model folder.
DEFINING = ("style", "data", "network", "variant", "widths", "content_layers", "style_layers",
            "content_weight", "style_weight", "pixel_weight", "tv_weight", "image_size", "style_size",
            "batch_size", "learning_rate", "seed")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="fast_style.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See README.md for the defaults and the model folder.")
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
    length.add_argument("--epochs", type=int, help="passes over the data (default 2)")
    length.add_argument("--steps", type=int, help="total training steps (overrides --epochs)")
    recipe = train.add_argument_group("recipe (defaults: Johnson et al. for VGG16, lengstrom's for VGG19)")
    recipe.add_argument("--variant", choices=("improved", "paper"), help="improved (default): instance "
                        "norm, resize-convolution, reflection padding; paper: batch norm, transposed "
                        "convolution, zero padding")
    recipe.add_argument("--widths", help="channels at full, half and quarter size (default 32,64,128)")
    recipe.add_argument("--content-layers", help="comma-separated, each optionally name:weight")
    recipe.add_argument("--style-layers", help="comma-separated, each optionally name:weight (a layer "
                        "without a weight gets 1/number of style layers)")
    recipe.add_argument("--content-weight", type=float, help="default 1 (VGG16), 7.5 (VGG19)")
    recipe.add_argument("--style-weight", type=float, help="default 5 (VGG16), 100 (VGG19)")
    recipe.add_argument("--pixel-weight", type=float, help="weight of the pixel loss (default 0)")
    recipe.add_argument("--tv-weight", type=float, help="total variation: default 0.4 (VGG16), 200 (VGG19)")
    recipe.add_argument("--image-size", type=int, help="side of the random training crops (default 256)")
    recipe.add_argument("--style-size", type=int, help="long side of the style image (default: "
                        "--image-size)")
    recipe.add_argument("--batch-size", type=int, help="images per step, over all devices (default 4)")
    recipe.add_argument("--learning-rate", type=float, help="Adam's (default 1e-3)")
    recipe.add_argument("--seed", type=int, help="initial weights, order of the data and crops (default 0)")
    run = train.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=500, help="save a checkpoint every N "
                     "steps (default 500)")
    run.add_argument("--preview-every", type=int, default=500, help="stylize the preview images every "
                     "N steps (default 500)")
    run.add_argument("--print-every", type=int, default=100, help="keep a progress line every N steps "
                     "(default 100)")
    run.add_argument("--devices", help="comma-separated devices for MirroredStrategy, e.g. "
                     "/gpu:0,/gpu:1 (default: all GPUs when there are several)")

    stylize = commands.add_parser("stylize", help="stylize an image, a folder of images or a video")
    stylize.add_argument("--model", required=True, type=Path, help="a trained model folder")
    stylize.add_argument("--input", required=True, type=Path, help="an image, a folder or a video")
    stylize.add_argument("--output", required=True, type=Path, help="an image, a folder or a video")
    stylize.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    stylize.add_argument("--preserve-colors", action="store_true", help="keep the input's colours")
    stylize.add_argument("--batch-size", type=int, default=4, help="images or frames per pass")

    export = commands.add_parser("export", help="write saved_model/ and model.tflite from the latest "
                                 "checkpoint")
    export.add_argument("--model", required=True, type=Path, help="a model folder")
    return parser.parse_args(argv)


def settings_from(args):
    """The training's Settings: the model folder's with --resume, else the options given."""
    import feedforward
    given = {}
    for name in DEFINING:
        value = getattr(args, name)
        if value is None:
            continue
        if name in ("style", "data", "network"):
            value = str(value.resolve())
        elif name == "widths":
            value = parse_widths(value)
        elif name.endswith("_layers"):
            value = parse_layers(value, "--" + name.replace("_", "-"), style=name == "style_layers")
        given[name] = value
    if args.resume:
        settings = feedforward.load_settings(args.model)
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
        settings = feedforward.Settings(**given)
    if args.epochs is not None:
        settings.epochs, settings.steps = args.epochs, None
    if args.steps is not None:
        settings.steps = args.steps
    return settings


def parse_widths(text):
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--widths takes three channel counts such as 32,64,128, not '{text}'") from None


def run_train(args):
    import feedforward
    import vgg
    settings = settings_from(args)
    network = vgg.load(settings.network)
    settings = settings.with_defaults(network)
    devices = args.devices.split(",") if args.devices else None
    line = progress.LiveLine()
    with progress.graceful_interrupt() as stop_request:
        try:
            result = feedforward.train(settings, args.model, network, resume=args.resume,
                                       overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                                       preview_every=args.preview_every,
                                       print_every=args.print_every, devices=devices,
                                       stop=lambda: bool(stop_request), report=line.show)
        finally:
            line.close()
    if result.unreadable:
        print(f"skipped {result.unreadable} unreadable image files in {settings.data}", file=sys.stderr)
    checkpoints = args.model / feedforward.CHECKPOINTS
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
        print(f"trained {result.step} steps; exported {args.model / feedforward.SAVED_MODEL} and "
              f"{args.model / feedforward.TFLITE_FILE}")
    else:
        print(f"trained {result.step} steps; worker 0 writes {args.model}")
    return 0


def run_stylize(args):
    import feedforward
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive number, not {args.batch_size}")
    source, output = args.input, args.output
    if not source.exists():
        raise UserError(f"input {source} does not exist")
    is_video = source.is_file() and source.suffix.lower() in feedforward.VIDEO_EXTENSIONS
    if source.is_dir():
        if output.exists() and not output.is_dir():
            raise UserError(f"--output {output} is a file; a folder input needs an output folder")
    elif not is_video:
        import images
        images.check_writable(output, args.overwrite)
    stylizer = feedforward.Stylizer(args.model)
    line = progress.LiveLine()
    try:
        if source.is_dir():
            written, skipped = feedforward.stylize_folder(
                stylizer, source, output, args.batch_size, args.overwrite, args.preserve_colors, line.show)
            line.close()
            for reason in skipped:
                print(f"skipped: {reason}", file=sys.stderr)
            print(f"stylized {written} images into {output}")
        elif is_video:
            count = feedforward.stylize_video(stylizer, source, output, args.batch_size, args.overwrite,
                                              args.preserve_colors, line.show)
            line.close()
            print(f"stylized {count} frames into {output}")
        else:
            saved = feedforward.stylize_image(stylizer, source, output, args.overwrite, args.preserve_colors)
            print(f"saved {saved}")
    finally:
        line.close()
    if stylizer.reduced:
        print("some images were too large for memory and were stylized at a reduced size",
              file=sys.stderr)
    return 0


def run_export(args):
    import feedforward
    saved, tflite = feedforward.export(args.model)
    print(f"exported {saved} and {tflite}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return {"train": run_train, "stylize": run_stylize, "export": run_export}[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
