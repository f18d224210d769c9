"""The digits study of the two-stage schedule: a feed-forward network whose encoder shares VGG's first
layers, trained on handwritten digits with and without stage 2, from the same initialisation and data
order, and compared.

    python fast_style.py study-digits --style painting.jpg --out study/ [--mnist mnist.npz]

The study folder:
    study.json      what defines the study, so that --resume continues it
    data/           the training digits as PNG files: the data folder every training reads
    held_out/       other digits (--held-out), which the networks are measured on
    seed_S/stage1_only/  model folder of run A for seed S: stage 1 (shared layers fixed) for N + M steps
    seed_S/two_stage/    model folder of run B: stage 1 for N steps, then stage 2 (all trained) for M
    report.json     per run and seed: a digit reader's accuracy on the stylized held-out digits (and
                    on the clean ones), their content, style and TV losses; mean and spread over seeds
    comparison.png  ten held-out digits and each network's stylizations of them, labelled with the numbers
    losses.png      the total loss and its weighted terms per step, A and B (mean over the seeds)
    losses.json     the per-step numbers, and every network's losses on the held-out digits

Digits are white on black (MNIST's convention), as RGB 0..255 at --image-size.
"""
import dataclasses
import gzip
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fast_apply
import fast_train
import files
import grids
import images
from errors import UserError
from quiet_tf import tf

RUNS = {"A": "stage1_only", "B": "two_stage"}
DEFAULT_DIGITS, DEFAULT_HELD_OUT = 1000, 200
STUDY_FILE, DATA, HELD_OUT_DIR = "study.json", "data", "held_out"
COMPARISON, LOSS_PLOT, LOSS_NUMBERS, REPORT = "comparison.png", "losses.png", "losses.json", "report.json"
OUTPUTS = (STUDY_FILE, DATA, HELD_OUT_DIR, COMPARISON, LOSS_PLOT, LOSS_NUMBERS, REPORT)
MNIST_HINT = ("give Keras' mnist.npz (https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz) "
              "or MNIST's train-images-idx3-ubyte[.gz] with train-labels-idx1-ubyte[.gz] beside it")


# ---------------------------------------------------------------------------------------------
# The digits

@dataclass
class Source:
    """Clean digits: [n, height, width] float32 in 0..255, white on black; their labels; what they are."""
    raw: np.ndarray
    labels: np.ndarray
    name: str


def load_source(mnist):
    """The MNIST file `mnist` (.npz or IDX, gzipped or not), or, without one, the 8x8 digits that
    scikit-learn ships in its wheel (values 0..16)."""
    return _read_mnist(Path(mnist)) if mnist else _sklearn_digits()


def as_rgb(raw, size):
    """Digits [n, h, w] as float32 RGB [n, size, size, 3] in 0..255, upscaled (bicubic)."""
    return np.stack([images.resize(np.repeat(digit[..., np.newaxis], 3, axis=2), size, size)
                     for digit in raw]).astype(np.float32)


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise UserError("without --mnist the study uses scikit-learn's digits: pip install scikit-learn, "
                        f"or {MNIST_HINT} as --mnist") from None
    found = sklearn_digits()
    return Source((found.images * (255.0 / 16.0)).astype(np.float32), found.target,
                  "scikit-learn's 8x8 digits (1,797)")


def _read_mnist(path):
    """A Source from an MNIST .npz (x_train and y_train) or IDX images file (its labels file beside it)."""
    data = _read_file(path)
    if data[:2] == b"PK":
        raw, labels = _npz_digits(path)
    elif data[:2] == b"\x00\x00" and len(data) >= 4:
        raw, labels = _idx_array(path, data, images=True), _idx_labels(path)
    else:
        raise UserError(f"--mnist {path} is neither a .npz nor an IDX file: {MNIST_HINT}")
    if raw.ndim != 3 or min(raw.shape) < 1 or not np.issubdtype(raw.dtype, np.number):
        raise UserError(f"--mnist {path} holds an array of shape {raw.shape} ({raw.dtype}), not digit "
                        f"images [count, height, width]: {MNIST_HINT}")
    if labels.shape != raw.shape[:1]:
        raise UserError(f"--mnist {path}: {labels.size:,} labels for {len(raw):,} digits; give the labels "
                        f"of these digits")
    raw = raw.astype(np.float32)
    return Source(raw * 255.0 if raw.max() <= 1.0 else raw, labels.astype(np.int64),
                  f"MNIST from {path.name} ({len(raw):,} digits)")


def _read_file(path, what="--mnist"):
    """The bytes of a file, gunzipped if it is gzipped."""
    if not path.is_file():
        raise UserError(f"{what} {path} {'is a folder' if path.is_dir() else 'does not exist'}: {MNIST_HINT}")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise UserError(f"{what} {path} is a damaged gzip file ({error})") from None
    return data


def _npz_digits(path):
    """x_train and y_train (Keras' layout)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            names = list(arrays.files)
            if "x_train" in names and "y_train" in names:
                return arrays["x_train"], arrays["y_train"]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"--mnist {path} cannot be read as a .npz file ({error})") from None
    raise UserError(f"--mnist {path} holds {', '.join(names) or 'no arrays'}, not x_train and y_train "
                    f"(the digits and their labels): {MNIST_HINT}")


def _idx_labels(images_path):
    """The labels of an IDX images file, from the labels file beside it as MNIST names them
    (train-images-idx3-ubyte: train-labels-idx1-ubyte, gzipped or not)."""
    name = images_path.name.replace("images-idx3", "labels-idx1")
    candidates = [images_path.with_name(name.removesuffix(".gz") + suffix) for suffix in ("", ".gz")]
    found = [path for path in candidates if path.is_file() and name != images_path.name]
    if not found:
        raise UserError(f"the digit reader needs the labels of --mnist {images_path}: put MNIST's labels "
                        f"file ({candidates[0].name}[.gz]) beside it")
    return _idx_array(found[0], _read_file(found[0], "labels file"), images=False)


def _idx_array(path, data, images):
    """The IDX format of MNIST's files: 0, 0, type (8: unsigned bytes), dimensions; sizes as
    big-endian int32; the values. Images have 3 dimensions, labels 1."""
    kind, dimensions = data[2], data[3]
    if images and kind == 8 and dimensions == 1:
        raise UserError(f"--mnist {path} is an MNIST label file; give the images file "
                        f"(train-images-idx3-ubyte[.gz]), with the labels file beside it")
    if kind != 8 or dimensions != (3 if images else 1):
        what = "digit images" if images else "labels"
        raise UserError(f"{path} is not an IDX file of {what} (type {kind}, {dimensions} dimensions; "
                        f"expected unsigned bytes in {3 if images else 1}): {MNIST_HINT}")
    shape = tuple(int(n) for n in np.frombuffer(data[4:4 + 4 * dimensions], ">i4"))
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * dimensions)
    if len(shape) != dimensions or values.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: {values.size:,} values for an array of shape {shape}")
    return values.reshape(shape)


# ---------------------------------------------------------------------------------------------
# The study

@dataclass
class Study:
    """What defines a study: the settings both runs share, the two stages, the seeds and the digits."""
    settings: fast_train.Settings  # data: the study's data/ folder; no stages; its seed is unused
    stage1_steps: int
    stage2_steps: int
    seeds: tuple  # both runs are trained for each
    mnist: str | None = None
    digits: int = DEFAULT_DIGITS
    held_out: int = DEFAULT_HELD_OUT
    source: str = ""  # what the digits are, once they are written

    def runs(self, seed):
        """{run: Settings} of one seed: A never trains the shared layers, B does for the last M steps."""
        n, m = self.stage1_steps, self.stage2_steps
        return {"A": dataclasses.replace(self.settings, seed=seed, stage1_steps=n + m, stage2_steps=0),
                "B": dataclasses.replace(self.settings, seed=seed, stage1_steps=n, stage2_steps=m)}

    def labels(self):
        n, m = self.stage1_steps, self.stage2_steps
        return {"A": f"A: stage 1 for {n + m} steps", "B": f"B: stage 1 for {n}, stage 2 for {m} steps"}

    def check(self):
        if self.stage1_steps < 1 or self.stage2_steps < 1:
            raise UserError(f"the study needs both stages: --stage1-steps and --stage2-steps must be "
                            f"positive, not {self.stage1_steps} and {self.stage2_steps}")
        for value, option in ((self.digits, "--digits"), (self.held_out, "--held-out")):
            if value < 1:
                raise UserError(f"{option} must be a positive number, not {value}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise UserError(f"--seeds takes different numbers 0 or above, such as 0,1,2, not "
                            f"{','.join(map(str, self.seeds))}")


def model_folder(out, seed, run):
    return Path(out) / f"seed_{seed}" / RUNS[run]


def load_study(out):
    path = Path(out) / STUDY_FILE
    if not path.is_file():
        raise UserError(f"{out} holds no study ({STUDY_FILE} is missing); start one with "
                        f"`fast_style.py study-digits --style S --out {out}`")
    values = json.loads(path.read_text())
    return Study(**{**values, "settings": fast_train.settings_from_dict(values["settings"]),
                    "seeds": tuple(values["seeds"])})


@dataclass
class StudyResult:
    status: str  # "done", "interrupted" or "diverged"
    run: str  # the run that stopped, or the last
    seed: int
    step: int
    report: dict  # the contents of report.json, when done


def run_study(out, study, network, resume=False, overwrite=False, checkpoint_every=500, preview_every=500,
              print_every=100, stop=lambda: False, report=lambda step, steps, text, keep: None):
    """Train runs A and B (see the module docstring) for each seed into `out`, then measure them on
    the held-out digits and write the sheets; returns a StudyResult. Stops, saves and resumes as
    fast_train.train does.

    The two runs of a seed are the same training for their first N steps, so that part is trained
    once: run A stops at step N, its folder is copied into run B's, and both continue from there, A
    in stage 1, B in stage 2 (the interrupted-and-resumed path of fast_train.train, which equals an
    uninterrupted training)."""
    out = Path(out)
    study.check()
    previous = [] if resume else _check_folder(out, overwrite)
    for seed in study.seeds:
        for settings in study.runs(seed).values():
            settings.check(network)
    # The loss network and the style's Gram matrices: they check the sizes before any file is written,
    # and measure the networks on the held-out digits at the end.
    loss = fast_train.PerceptualLoss(network, fast_train.load_style(study.settings), study.settings)
    source = load_source(study.mnist)
    needed = study.digits + study.held_out
    if needed > len(source.raw):
        raise UserError(f"{source.name} holds {len(source.raw)} digits; the study needs {needed} "
                        f"(--digits and --held-out)")
    if not resume:
        for path in previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        study.source = f"{source.name}, resized from {source.raw.shape[1]} to {study.settings.image_size} px"
        _write_digits(out / DATA, as_rgb(source.raw[:study.digits], study.settings.image_size))
        _write_digits(out / HELD_OUT_DIR, as_rgb(source.raw[study.digits:needed], study.settings.image_size))
        files.write_json(out / STUDY_FILE, dataclasses.asdict(study))
    options = dict(checkpoint_every=checkpoint_every, preview_every=preview_every, print_every=print_every)
    for seed in study.seeds:
        runs = study.runs(seed)
        shown = lambda run: lambda step, steps, line, keep: report(step, steps, f"seed {seed} {run} {line}", keep)
        a, b = model_folder(out, seed, "A"), model_folder(out, seed, "B")
        if not (b / fast_train.SETTINGS_FILE).exists():  # the steps both runs share
            result = _train_shared(runs["A"], a, network, study.stage1_steps, options, stop, shown("A"))
            if result.status != "done":
                return StudyResult(result.status, "A", seed, result.step, {})
            _branch(a, b, runs["B"])
        for run, model in (("A", a), ("B", b)):
            if (model / fast_train.SAVED_MODEL).exists():
                continue  # finished and exported
            result = fast_train.train(runs[run], model, network, resume=True, stop=stop,
                                       report=shown(run), **options)
            if result.status != "done":
                return StudyResult(result.status, run, seed, result.step, {})
    numbers = _write_results(out, study, source, loss)
    return StudyResult("done", "B", study.seeds[-1], study.stage1_steps + study.stage2_steps, numbers)


def _train_shared(settings, model, network, steps, options, stop, report):
    """Train `settings` into `model` (resuming what is there) until step `steps`; "done" when it got
    there."""
    resume = (model / fast_train.SETTINGS_FILE).exists()
    latest = tf.train.latest_checkpoint(model / fast_train.CHECKPOINTS) if resume else None
    start = int(latest.rsplit("-", 1)[1]) if latest else 0
    left, asked = max(steps - start, 0), {"user": False}

    def stop_at_steps():  # the loop asks before every step
        nonlocal left
        asked["user"] = stop()
        left -= 1
        return asked["user"] or left < 0

    result = fast_train.train(settings, model, network, resume=resume, overwrite=True, stop=stop_at_steps,
                               report=report, **options)
    if result.status == "interrupted" and not asked["user"]:
        result.status = "done"
    return result


def _branch(a, b, settings):
    """Run B's folder: a copy of run A's at the end of the shared steps, with B's settings."""
    def write(temporary):
        shutil.copytree(a, temporary, dirs_exist_ok=True)
        fast_train.save_settings(settings, temporary)

    files.write_atomic(b, write, folder=True)


def _check_folder(out, overwrite):
    """What a new study in `out` replaces; a UserError where it would replace one unasked."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    held = [path for path in out.iterdir() if path.name in OUTPUTS or path.name.startswith("seed_")] \
        if out.is_dir() else []
    if held and not overwrite:
        raise UserError(f"{out} already holds a study; pass --resume to continue it, --overwrite to start "
                        f"over, or choose another --out folder")
    return held


def _write_digits(folder, digits):
    folder.mkdir(parents=True, exist_ok=True)
    for i, digit in enumerate(digits):
        images.save_image(folder / f"digit_{i:05d}.png", digit)


# ---------------------------------------------------------------------------------------------
# The measurements

METRICS = ("reader_accuracy", "content", "style", "tv", "total")  # the report's, per network


def _write_results(out, study, source, loss):
    """Measure every network on the held-out digits; write report.json, losses.json, the comparison
    sheet and the loss plot; return the report."""
    from digit_reader import DigitReader

    size = study.settings.image_size
    first, last = study.digits, study.digits + study.held_out
    held, labels = as_rgb(source.raw[first:last], size), source.labels[first:last]
    # The reader learns from every clean digit but the held-out ones.
    reader = DigitReader.train(np.concatenate([source.raw[:first], source.raw[last:]]),
                               np.concatenate([source.labels[:first], source.labels[last:]]))
    shown = sheet_columns(labels)
    measured, stylized = {run: {} for run in RUNS}, {}
    for seed in study.seeds:
        for run in RUNS:
            net = fast_apply.restore_network(model_folder(out, seed, run))
            output = np.concatenate([net(tf.constant(held[i:i + 50])).numpy() for i in range(0, len(held), 50)])
            measured[run][seed] = {"reader_accuracy": reader.accuracy(output, labels),
                                   **held_out_losses(loss, held, output)}
            stylized[seed, run] = output[shown]
    report = build_report(study, reader, reader.accuracy(held, labels), measured, loss.weights)
    files.write_json(out / REPORT, report)
    rows = [(stylized[seed, run], row_label(run, seed, measured[run][seed]))
            for seed in study.seeds for run in RUNS]
    save_comparison(out / COMPARISON, held[shown], [row for row, _ in rows], [label for _, label in rows],
                    header=summary_lines(report))
    steps = {seed: {run: fast_train.read_losses(model_folder(out, seed, run)) for run in RUNS}
             for seed in study.seeds}
    numbers = {"data": study.source, "stage1_steps": study.stage1_steps, "stage2_steps": study.stage2_steps,
               "weights": loss.weights, "labels": study.labels(),
               "held_out": {run: {str(seed): values for seed, values in measured[run].items()} for run in RUNS},
               "steps": {str(seed): runs for seed, runs in steps.items()}}
    files.write_json(out / LOSS_NUMBERS, numbers)
    save_loss_plot(out / LOSS_PLOT, mean_over_seeds(steps), loss.weights, study.labels(), study.stage1_steps)
    return report


def held_out_losses(loss, held, output, batch=50):
    """{term: value before its weight, "total"} of stylized held-out digits, the mean over all of them."""
    sums = {}
    for i in range(0, len(held), batch):
        terms = loss.terms(tf.constant(held[i:i + batch]), tf.constant(output[i:i + batch]))
        terms["total"] = loss.total(terms)
        count = len(held[i:i + batch])
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value) * count
    return {name: value / len(held) for name, value in sums.items()}


def build_report(study, reader, clean_accuracy, measured, weights):
    """report.json: per run and seed the reader's accuracy and the held-out losses, their mean and
    spread over the seeds, and the paired difference B - A (the two runs of a seed share their start)."""
    seeds = list(study.seeds)

    def spread(per_seed):
        values = {name: np.array([per_seed[seed][name] for seed in seeds]) for name in METRICS}
        return {"mean": {name: float(v.mean()) for name, v in values.items()},
                "sd": {name: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for name, v in values.items()},
                "min": {name: float(v.min()) for name, v in values.items()},
                "max": {name: float(v.max()) for name, v in values.items()}}

    difference = {seed: {name: measured["B"][seed][name] - measured["A"][seed][name] for name in METRICS}
                  for seed in seeds}
    return {
        "data": study.source, "image_size": study.settings.image_size, "training_digits": study.digits,
        "held_out_digits": study.held_out, "seeds": seeds,
        "stage1_steps": study.stage1_steps, "stage2_steps": study.stage2_steps,
        "weights": weights, "labels": study.labels(),
        "reader": {"what": reader.describe(), "input_size": reader.size, "trained_on": reader.trained_on,
                   "clean_accuracy": clean_accuracy},
        "runs": {run: {"per_seed": {str(seed): measured[run][seed] for seed in seeds}, **spread(measured[run])}
                 for run in RUNS},
        "B_minus_A": {"per_seed": {str(seed): difference[seed] for seed in seeds}, **spread(difference)},
    }


def sheet_columns(labels, count=10):
    """Indices of the held-out digits the sheet shows: the first of each class, then the next ones."""
    firsts = [int(np.flatnonzero(labels == digit)[0]) for digit in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in firsts]
    return sorted((firsts + rest)[:count])


def row_label(run, seed, values):
    return (f"{run} seed {seed}: read {values['reader_accuracy']:.0%}, content {values['content']:.3g}, "
            f"style {values['style']:.3g}")


def summary_lines(report):
    """The sheet's header: per run the mean and spread (sd) over the seeds of each measurement."""
    seeds = len(report["seeds"])
    lines = [f"reader: {report['reader']['what']}; on the {report['held_out_digits']} clean held-out digits "
             f"it reads {report['reader']['clean_accuracy']:.1%}"]
    for run, label in report["labels"].items():
        mean, sd = report["runs"][run]["mean"], report["runs"][run]["sd"]
        lines.append(f"{label}: read {mean['reader_accuracy']:.1%} ± {sd['reader_accuracy']:.1%}, content "
                     f"{mean['content']:.3g} ± {sd['content']:.2g}, style {mean['style']:.3g} ± "
                     f"{sd['style']:.2g} (mean ± sd over {seeds} seeds)")
    return lines


def mean_over_seeds(steps):
    """{run: per-step entries}, each term the mean over the seeds (all seeds have the same steps)."""
    runs = {}
    for run in RUNS:
        logs = [by_run[run] for by_run in steps.values()]
        runs[run] = [{name: (entries[0][name] if name in ("step", "stage") else
                             float(np.mean([entry[name] for entry in entries]))) for name in entries[0]}
                     for entries in zip(*logs)]
    return runs


def _replace(path, write):
    """Write through a temporary file beside `path`, then rename: never a half-written result."""
    files.write_atomic(path, write)


# ---------------------------------------------------------------------------------------------
# The pictures

TILE = 64  # least size a digit is shown at, in pixels (nearest-neighbour upscaling)
GAP, LABEL_SIZE = 4, 14


def save_comparison(path, inputs, rows, labels, header=()):
    """The inputs in the first row and each of `rows` (stylizations of them) below, each row labelled,
    under the `header` lines."""
    from PIL import Image, ImageDraw

    scale = -(-TILE // inputs.shape[1])  # ceil
    grid = grids.compose([list(inputs), *map(list, rows)], ["input (held out)", *labels], gap=GAP,
                         scale=scale, font_size=LABEL_SIZE)
    font = grids.load_font(LABEL_SIZE)
    top = len(header) * (LABEL_SIZE + GAP)
    width = max(grid.shape[1], 2 * GAP + max((grids.text_width(font, line) for line in header), default=0))
    picture = Image.new("RGB", (width, top + grid.shape[0]), "white")
    picture.paste(Image.fromarray(np.clip(np.round(grid), 0, 255).astype(np.uint8)), (0, top))
    draw = ImageDraw.Draw(picture)
    for r, line in enumerate(header):
        draw.text((GAP, GAP + r * (LABEL_SIZE + GAP)), line, fill=(0, 0, 0), font=font, anchor="lt")
    images.save_image(path, np.asarray(picture))


def save_loss_plot(path, steps, weights, labels, boundary):
    """The total loss and each weighted term per step, A solid and B dashed, on a log scale, with a
    running mean over about a fiftieth of the steps drawn over the raw values."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("the loss plot needs matplotlib: pip install matplotlib") from None
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    axes = figure.subplots()
    names = ["total"] + [name for name, weight in weights.items() if weight > 0]
    colours = dict(zip(names, ["black", "tab:blue", "tab:orange", "tab:green", "tab:red"]))
    lowest = np.inf  # of the running means
    for run, style in zip(steps, ["-", "--"]):
        x = np.array([entry["step"] for entry in steps[run]])
        for name in names:
            y = np.array([entry[name] * (1.0 if name == "total" else weights[name]) for entry in steps[run]])
            if not len(y):
                continue
            window = max(1, len(y) // 50)
            mean = np.convolve(y, np.ones(window) / window, mode="valid")
            lowest = min(lowest, mean[mean > 0].min(initial=np.inf))
            axes.plot(x, y, style, color=colours[name], alpha=0.15, linewidth=0.8)
            axes.plot(x[window - 1:], mean, style, color=colours[name], linewidth=1.5,
                      label=f"{labels[run].split(':')[0]} {name}" + ("" if name == "total" else " (weighted)"))
    axes.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=1)
    axes.annotate("B: stage 2 starts", (boundary + 0.5, 1), xycoords=("data", "axes fraction"),
                  xytext=(4, -12), textcoords="offset points", color="grey")
    axes.set_yscale("log")
    if np.isfinite(lowest):  # an identity start's first content term is 0: raw values may reach 1e-12
        axes.set_ylim(bottom=lowest / 2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (running mean; raw values faint)")
    axes.set_title(f"{labels['A']} (solid)  vs  {labels['B']} (dashed)")
    axes.legend(ncol=2, fontsize="small")
    _replace(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
