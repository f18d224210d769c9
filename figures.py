"""Reproduce the figures of Gatys, Ecker & Bethge (CVPR 2016) side by side with the paper's.

    python figures.py figure2 --content tubingen.jpg --style shipwreck.jpg starry_night.jpg ... --out fig2/
    python figures.py figure3 --content tubingen.jpg --style composition_vii.jpg --out fig3/
    python figures.py figure-init --content tubingen.jpg --style the_scream.jpg --out fig6/

Every run uses the gatys2016 preset (the normalised network, L-BFGS, white noise, relu4_2 content
layer, average pooling, the authors' loss units) with `--balance auto` unless an option says
otherwise, so that the paper's alpha/beta gives the paper's balance on the network at hand. Each
tile is written to OUT/tiles/ with its exact settings beside it (JSON), under a name keyed by what
it is made from (every setting and the SHA-256 of the content, the styles and the network), and
reused when it exists, so an interrupted figure continues where it stopped and a changed input makes
a new tile; a diverged or interrupted tile is never taken for a finished one. The grid is
OUT/<figure>.png, with OUT/<figure>.json recording every tile (with each tile's balance factor).
"""
import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import cli
import files
import grids
import images
import progress
import vgg
from errors import UserError
from presets import OPTIMIZERS, balance_value, settings_for_preset

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PAPER_NAMES = {name: name.replace("relu", "conv") for name in STYLE_LAYERS}  # the paper's labels


def main(argv=None):
    return cli.entry(lambda: run(parse_args(argv)))


def parse_args(argv):
    parser = cli.ArgumentParser(prog="figures.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    figures = parser.add_subparsers(dest="figure", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--content", type=Path, required=True, help="the photo (the paper: Tübingen)")
    common.add_argument("--network", type=Path, help="the .mat file (default: weights/, downloaded once)")
    common.add_argument("--iterations", type=cli.positive_int, default=500, help="L-BFGS evaluations per tile (500)")
    common.add_argument("--max-size", type=cli.positive_int, default=512, help="long side of every tile (512)")
    common.add_argument("--out", type=Path, required=True, help="folder for the grid, the tiles and the settings")
    common.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs")
    common.add_argument("--normalize-network", action=argparse.BooleanOptionalAction, default=True,
                        help="the paper's rescaled network (default on)")
    common.add_argument("--seed", type=cli.seed, default=0, help="seed of the white-noise starting image")
    common.add_argument("--loss-units", choices=("authors", "printed"), default="authors",
                        help="authors (default: the paper's ratios are in these) or printed")
    common.add_argument("--balance", type=balance_value, default="auto",
                        help="auto (default): calibrate beta on this network; off; or the factor")
    two = figures.add_parser("figure2", parents=[common], help="one content image in several styles (Fig. 2)")
    two.add_argument("--style", type=Path, nargs="+", required=True)
    two.add_argument("--ratio", type=cli.positive_float, default=1e-3, help="alpha/beta (the paper: 1e-3 or 1e-4)")
    three = figures.add_parser("figure3", parents=[common],
                               help="style layers (rows) against alpha/beta (columns) (Fig. 3)")
    three.add_argument("--style", type=Path, required=True)
    three.add_argument("--ratios", default="1e-5,1e-4,1e-3,1e-2", help="alpha/beta of the columns")
    init = figures.add_parser("figure-init", parents=[common],
                              help="starting from the content, the style and white noise (Fig. 6)")
    init.add_argument("--style", type=Path, required=True)
    init.add_argument("--ratio", type=cli.positive_float, default=1e-3)
    init.add_argument("--noise-seeds", type=cli.positive_int, default=2, help="white-noise starts (the paper shows 4)")
    return parser.parse_args(argv)


def run(args):
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder for the figure")
    ratios = parse_ratios(args.ratios) if args.figure == "figure3" else None
    content = images.cap_long_side(images.load_image(args.content, "content image"), args.max_size)
    styles = args.style if isinstance(args.style, list) else [args.style]
    style_images = [images.load_image(path, "style image") for path in styles]
    network = vgg.load(args.network if args.network else vgg.ensure_default())
    base = base_settings(args)
    if args.figure == "figure2":
        tiles = [[Tile(_stem(path), _with_ratio(base, args.ratio), [image], [path])
                  for path, image in zip(styles, style_images)]]
        grid = Grid(rows=[""], columns=["content"] + [_stem(p) for p in styles], insets=True)
    elif args.figure == "figure3":
        tiles = []
        for depth in range(1, len(STYLE_LAYERS) + 1):
            layers = ",".join(STYLE_LAYERS[:depth])
            row = []
            for ratio in ratios:
                settings = dataclasses.replace(_with_ratio(base, ratio),
                                               style_layers={n: 1.0 / depth for n in STYLE_LAYERS[:depth]})
                row.append(Tile(f"{layers.replace(',', '+')}_{ratio:g}", settings, style_images))
            tiles.append(row)
        grid = Grid(rows=[_layers_label(STYLE_LAYERS[:depth]) for depth in range(1, len(STYLE_LAYERS) + 1)],
                    columns=[f"alpha/beta {_power(r)}" for r in ratios], insets=False)
    else:
        settings = _with_ratio(base, args.ratio)
        starts = [("from content", dataclasses.replace(settings, init="content")),
                  ("from style", dataclasses.replace(settings, init="style"))]
        starts += [(f"from noise {seed}", dataclasses.replace(settings, init="noise", seed=seed))
                   for seed in range(args.noise_seeds)]
        tiles = [[Tile(name.replace(" ", "_"), s, style_images) for name, s in starts]]
        grid = Grid(rows=[""], columns=[name for name, _ in starts], insets=False)
    return render(args, network, content, style_images, tiles, grid)


def base_settings(args):
    """Every tile's settings before its own ratio, layers and start: gatys2016 as the options say."""
    return settings_for_preset("gatys2016", iterations=args.iterations, optimizer=args.optimizer,
                               normalize_network=args.normalize_network, seed=args.seed,
                               loss_units=args.loss_units, balance=args.balance)


def _recorded_factor(tile_path):
    """The balance factor a reused tile was made with, from its settings file."""
    try:
        return json.loads(tile_path.with_suffix(".json").read_text()).get("balance_factor")
    except (OSError, ValueError, AttributeError):
        return None


def parse_ratios(text):
    """--ratios: comma-separated positive alpha/beta values, e.g. 1e-4,1e-3."""
    ratios = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        try:
            ratios.append(cli.positive_float(item))
        except (ValueError, TypeError, cli.argparse.ArgumentTypeError):
            raise UserError(f"--ratios: '{item}' is not a positive number; give alpha/beta values "
                            f"such as 1e-4,1e-3") from None
    if not ratios:
        raise UserError("--ratios is empty; give alpha/beta values such as 1e-4,1e-3")
    return ratios


def _stem(path):
    return Path(path).stem


def _layers_label(layers):
    """The paper's row titles: conv1_1, conv1_1 + conv2_1, conv1_1 ... conv3_1, ..."""
    names = [PAPER_NAMES[name] for name in layers]
    return " + ".join(names) if len(names) <= 2 else f"{names[0]} ... {names[-1]}"


def _power(ratio):
    """1e-05 -> 1e-5, as the paper writes its ratios."""
    mantissa, exponent = f"{ratio:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _with_ratio(settings, ratio):
    """alpha/beta as the paper states it: alpha = ratio, beta = 1."""
    if ratio <= 0:
        raise UserError(f"alpha/beta must be positive, not {ratio:g}")
    return dataclasses.replace(settings, content_weight=ratio, style_weight=1.0)


@dataclasses.dataclass
class Tile:
    name: str
    settings: object
    styles: list  # the style images (arrays)
    style_paths: list = None  # their files, for the record and the key

    def record(self, args, network, content):
        """What the tile is made from: the key is every setting and the SHA-256 of the content's and
        the styles' pixels and of the network file, so a changed image or a same-named painting
        elsewhere is a new tile; the paths are for people reading the JSON."""
        paths = self.style_paths or [Path(p) for p in (args.style if isinstance(args.style, list) else [args.style])]
        key = {"settings": dataclasses.asdict(self.settings), "max_size": args.max_size,
               "network_sha256": network.sha256, "normalization": network.normalization,
               "content_sha256": _pixels_sha256(content),
               "styles_sha256": [_pixels_sha256(style) for style in self.styles]}
        return {"name": self.name, **key, "content": str(args.content), "network": network.path,
                "styles": [str(p) for p in paths]}, key

    def path(self, folder, key):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return folder / f"{self.name}_{digest}.png"


@dataclasses.dataclass
class Grid:
    rows: list
    columns: list
    insets: bool  # figure 2: the style image in the corner of its result, as in the paper


def render(args, network, content, style_images, tiles, grid):
    """Make (or reuse) every tile, then compose the labelled grid. Only a finished tile is kept as
    finished (its PNG and JSON): an interrupted one is kept as NAME.interrupted.png until it is made
    again, a diverged one not at all; leftovers of an interrupted write are removed."""
    from stylize import stylize
    folder = args.out / "tiles"
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".*.part*"):  # a write cut short (power cut, kill -9)
        files.remove(leftover)
    todo = [tile for row in tiles for tile in row]
    results, records = {}, []
    with progress.graceful_interrupt("stopping after this iteration; finished tiles are kept") as stop:
        for number, tile in enumerate(todo, start=1):
            record, key = tile.record(args, network, content)
            path = tile.path(folder, key)
            records.append({**record, "file": str(path.relative_to(args.out))})
            reused = _finished_tile(path)
            if reused is not None:
                results[tile.name] = reused
                records[-1]["balance_factor"] = _recorded_factor(path)
                print(f"tile {number}/{len(todo)} {tile.name}: reusing {path}", file=sys.stderr)
                continue
            bar = progress.Bar(unit="iteration")

            def monitor(state, number=number, tile=tile):
                bar.update(state.iteration, f"tile {number}/{len(todo)} {tile.name}: iteration "
                           f"{state.iteration}/{state.total_iterations}  total loss {state.total_loss:.4g}",
                           state.iteration % 100 == 0 or state.iteration == state.total_iterations,
                           total=state.total_iterations, done=state.done)
                return not stop.should_stop()
            try:
                result = stylize(network, content, tile.styles, tile.settings, monitor)
            finally:
                bar.close()
            partial = path.with_suffix(".interrupted.png")
            if result.status == "interrupted":
                stop.shield()
                partial = images.save_image(partial, result.image)
                print(f"interrupted: the unfinished tile is in {partial}; the finished tiles are kept, and "
                      f"the same command finishes the figure (this tile starts over)", file=sys.stderr)
                return 130
            if result.status == "diverged":
                raise UserError(f"the loss of tile {tile.name} stopped being finite, so it is not kept; "
                                f"try --optimizer adam, fewer --iterations or other ratios")
            images.save_image(path, result.image)
            record = records[-1] = {**records[-1], "balance_factor": result.balance}
            files.write_json(path.with_suffix(".json"), record)  # last: the tile is finished
            files.remove(partial)
            results[tile.name] = result.image
    rows = [[content] + [results[t.name] for t in row] if grid.columns[0] == "content"
            else [results[t.name] for t in row] for row in tiles]
    insets = style_images if grid.insets else None
    figure = grids.compose(rows, grid.rows, grid.columns, insets)
    out, failure = images.save_result(args.out / f"{args.figure}.png", figure, what="figure")
    files.write_json(args.out / f"{args.figure}.json", {"figure": args.figure, "tiles": records})
    if failure is not None:
        return 1
    print(f"saved {out}")
    return 0


def _pixels_sha256(image):
    """SHA-256 of an image as read (its size and pixels): what a tile sees of the file."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


def _finished_tile(path):
    """The tile at `path` if it was finished (its JSON is written last) and still reads; else None."""
    if not (path.exists() and path.with_suffix(".json").exists()):
        return None
    try:
        return images.load_image(path)
    except UserError as error:
        print(f"note: {error}; making the tile again", file=sys.stderr)
        files.remove(path)
        return None


if __name__ == "__main__":
    sys.exit(main())
