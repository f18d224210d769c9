"""The digits study of the two-stage schedule: a feed-forward network whose encoder shares VGG's first
layers, trained on handwritten digits with and without stage 2, from the same initialisation and data
order, and compared.

    python fast_style.py study-digits --style painting.jpg --out study/ [--mnist mnist.npz]

The study folder:
    study.json      what defines the study, so that --resume continues it
    data/           the training digits as PNG files: the data folder both trainings read
    held_out/       8 other digits, stylized for the comparison
    stage1_only/    model folder of run A: stage 1 (shared layers fixed) for N + M steps
    two_stage/      model folder of run B: stage 1 for N steps, then stage 2 (all trained) for M
    comparison.png  the held-out digits, A's and B's stylizations, one row each
    losses.png      the total loss and its weighted terms per step, A and B
    losses.json     the same numbers, and both networks' losses on the held-out digits

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
HELD_OUT = 8
DEFAULT_DIGITS = 1000
STUDY_FILE, DATA, HELD_OUT_DIR = "study.json", "data", "held_out"
COMPARISON, LOSS_PLOT, LOSS_NUMBERS = "comparison.png", "losses.png", "losses.json"
OUTPUTS = (STUDY_FILE, DATA, HELD_OUT_DIR, *RUNS.values(), COMPARISON, LOSS_PLOT, LOSS_NUMBERS)
MNIST_HINT = ("give Keras' mnist.npz (https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz) "
              "or MNIST's train-images-idx3-ubyte[.gz]")


# ---------------------------------------------------------------------------------------------
# The digits

def load_digits(mnist, size, count):
    """The first `count` digits as float32 RGB [count, size, size, 3] in 0..255, white on black, and
    a description of their source: the MNIST file `mnist` (.npz or IDX, gzipped or not), or, without
    one, the 8x8 digits that scikit-learn ships in its wheel (values 0..16), upscaled."""
    raw, source = _read_mnist(Path(mnist)) if mnist else _sklearn_digits()
    if count > len(raw):
        raise UserError(f"{source} holds {len(raw)} digits; the study needs {count} (--digits and "
                        f"{HELD_OUT} held out for the comparison)")
    digits = [images.resize(np.repeat(digit[..., np.newaxis], 3, axis=2), size, size) for digit in raw[:count]]
    return np.stack(digits).astype(np.float32), f"{source}, resized from {len(raw[0])} to {size} px"


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise UserError("without --mnist the study uses scikit-learn's digits: pip install scikit-learn, "
                        f"or {MNIST_HINT} as --mnist") from None
    return sklearn_digits().images * (255.0 / 16.0), "scikit-learn's 8x8 digits (1,797)"


def _read_mnist(path):
    """[n, height, width] float in 0..255 from an MNIST .npz or IDX file."""
    if not path.is_file():
        raise UserError(f"--mnist {path} {'is a folder' if path.is_dir() else 'does not exist'}: {MNIST_HINT}")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise UserError(f"--mnist {path} is a damaged gzip file ({error})") from None
    if data[:2] == b"PK":
        raw = _npz_images(path)
    elif data[:2] == b"\x00\x00" and len(data) >= 4:
        raw = _idx_images(path, data)
    else:
        raise UserError(f"--mnist {path} is neither a .npz nor an IDX file: {MNIST_HINT}")
    if raw.ndim != 3 or min(raw.shape) < 1 or not np.issubdtype(raw.dtype, np.number):
        raise UserError(f"--mnist {path} holds an array of shape {raw.shape} ({raw.dtype}), not digit "
                        f"images [count, height, width]: {MNIST_HINT}")
    raw = raw.astype(np.float32)
    return (raw * 255.0 if raw.max() <= 1.0 else raw), f"MNIST from {path.name} ({len(raw):,} digits)"


def _npz_images(path):
    """x_train (Keras' layout), or the file's only array."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            names = list(arrays.files)
            if "x_train" in names:
                return arrays["x_train"]
            if len(names) == 1:
                return arrays[names[0]]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"--mnist {path} cannot be read as a .npz file ({error})") from None
    raise UserError(f"--mnist {path} holds {', '.join(names) or 'no arrays'} but no x_train: {MNIST_HINT}")


def _idx_images(path, data):
    """The IDX format of MNIST's files: 0, 0, type (8: unsigned bytes), dimensions; sizes as
    big-endian int32; the values."""
    kind, dimensions = data[2], data[3]
    if kind == 8 and dimensions == 1:
        raise UserError(f"--mnist {path} is an MNIST label file; give the images file "
                        f"(train-images-idx3-ubyte[.gz])")
    if kind != 8 or dimensions != 3:
        raise UserError(f"--mnist {path} is not an IDX file of digit images (type {kind}, {dimensions} "
                        f"dimensions; expected unsigned bytes in 3): {MNIST_HINT}")
    shape = tuple(int(n) for n in np.frombuffer(data[4:16], ">i4"))
    values = np.frombuffer(data, np.uint8, offset=16)
    if len(shape) != 3 or values.size != int(np.prod(shape)):
        raise UserError(f"--mnist {path} is truncated: {values.size:,} values for digits of shape {shape}")
    return values.reshape(shape)


# ---------------------------------------------------------------------------------------------
# The study

@dataclass
class Study:
    """What defines a study: the settings both runs share, the two stages and the digits."""
    settings: fast_train.Settings  # data: the study's data/ folder; no stages
    stage1_steps: int
    stage2_steps: int
    mnist: str | None = None
    digits: int = DEFAULT_DIGITS
    source: str = ""  # what the digits are, once they are written

    def runs(self):
        """{run: Settings}: A never trains the shared layers, B does for the last M steps."""
        n, m = self.stage1_steps, self.stage2_steps
        return {"A": dataclasses.replace(self.settings, stage1_steps=n + m, stage2_steps=0),
                "B": dataclasses.replace(self.settings, stage1_steps=n, stage2_steps=m)}

    def labels(self):
        n, m = self.stage1_steps, self.stage2_steps
        return {"A": f"A: stage 1 for {n + m} steps", "B": f"B: stage 1 for {n}, stage 2 for {m} steps"}


def load_study(out):
    path = Path(out) / STUDY_FILE
    if not path.is_file():
        raise UserError(f"{out} holds no study ({STUDY_FILE} is missing); start one with "
                        f"`fast_style.py study-digits --style S --out {out}`")
    values = json.loads(path.read_text())
    return Study(**{**values, "settings": fast_train.settings_from_dict(values["settings"])})


@dataclass
class StudyResult:
    status: str  # "done", "interrupted" or "diverged"
    run: str  # the run that stopped, or the last
    step: int
    held_out: dict  # {run: {loss term: value on the held-out digits}}, when done


def run_study(out, study, network, resume=False, overwrite=False, checkpoint_every=500, preview_every=500,
              print_every=100, stop=lambda: False, report=lambda line, keep: None):
    """Train runs A and B (see the module docstring) into `out`, then write the comparison sheet and
    the loss curves; returns a StudyResult. Stops, saves and resumes as fast_train.train does."""
    out = Path(out)
    if study.stage1_steps < 1 or study.stage2_steps < 1:
        raise UserError(f"the study needs both stages: --stage1-steps and --stage2-steps must be positive, "
                        f"not {study.stage1_steps} and {study.stage2_steps}")
    if study.digits < 1:
        raise UserError(f"--digits must be a positive number, not {study.digits}")
    previous = [] if resume else _check_folder(out, overwrite)
    runs = study.runs()
    for settings in runs.values():
        settings.check(network)
    # The loss network and the style's Gram matrices: they check the sizes before any file is written,
    # and measure both networks on the held-out digits at the end.
    loss = fast_train.PerceptualLoss(network, fast_train.load_style(study.settings), study.settings)
    if not resume:
        digits, study.source = load_digits(study.mnist, study.settings.image_size, study.digits + HELD_OUT)
        for path in previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        _write_digits(out / DATA, digits[:study.digits])
        _write_digits(out / HELD_OUT_DIR, digits[study.digits:])
        files.write_json(out / STUDY_FILE, dataclasses.asdict(study))
    for run, settings in runs.items():
        model = out / RUNS[run]
        if resume and (model / fast_train.SAVED_MODEL).exists():
            continue  # finished and exported
        result = fast_train.train(
            settings, model, network, resume=resume and (model / fast_train.SETTINGS_FILE).exists(),
            checkpoint_every=checkpoint_every, preview_every=preview_every, print_every=print_every,
            stop=stop, report=lambda line, keep, run=run: report(f"{run} {line}", keep))
        if result.status != "done":
            return StudyResult(result.status, run, result.step, {})
    held_out = _write_results(out, study, loss)
    return StudyResult("done", "B", study.stage1_steps + study.stage2_steps, held_out)


def _check_folder(out, overwrite):
    """What a new study in `out` replaces; a UserError where it would replace one unasked."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    held = [out / name for name in OUTPUTS if (out / name).exists()]
    if held and not overwrite:
        raise UserError(f"{out} already holds a study; pass --resume to continue it, --overwrite to start "
                        f"over, or choose another --out folder")
    return held


def _write_digits(folder, digits):
    folder.mkdir(parents=True, exist_ok=True)
    for i, digit in enumerate(digits):
        images.save_image(folder / f"digit_{i:05d}.png", digit)


def _write_results(out, study, loss):
    """comparison.png, losses.png and losses.json of two finished runs; returns the held-out losses."""
    held = np.stack([images.load_image(path) for path in sorted((out / HELD_OUT_DIR).glob("*.png"))])
    stylized, held_out = {}, {}
    for run, folder in RUNS.items():
        output = fast_apply.restore_network(out / folder)(tf.constant(held))
        terms = loss.terms(tf.constant(held), output)
        held_out[run] = {**{name: float(value) for name, value in terms.items()},
                         "total": float(loss.total(terms))}
        stylized[run] = output.numpy()
    labels = study.labels()
    save_comparison(out / COMPARISON, held, [stylized[run] for run in RUNS], [labels[run] for run in RUNS])
    steps = {run: fast_train.read_losses(out / folder) for run, folder in RUNS.items()}
    numbers = {"data": study.source,
               "stage1_steps": study.stage1_steps, "stage2_steps": study.stage2_steps,
               "weights": loss.weights, "labels": labels, "held_out": held_out, "steps": steps}
    _replace(out / LOSS_NUMBERS, lambda path: path.write_text(json.dumps(numbers, indent=1) + "\n"))
    save_loss_plot(out / LOSS_PLOT, steps, loss.weights, labels, study.stage1_steps)
    return held_out


def _replace(path, write):
    """Write through a temporary file beside `path`, then rename: never a half-written result."""
    files.write_atomic(path, write)


# ---------------------------------------------------------------------------------------------
# The pictures

TILE = 64  # least size a digit is shown at, in pixels (nearest-neighbour upscaling)
GAP, LABEL_SIZE = 4, 14


def save_comparison(path, inputs, rows, labels):
    """The inputs in the first row and each of `rows` (stylizations of them) below, each row labelled."""
    scale = -(-TILE // inputs.shape[1])  # ceil
    sheet = grids.compose([list(inputs), *map(list, rows)], ["input (held out)", *labels], gap=GAP,
                          scale=scale, font_size=LABEL_SIZE)
    images.save_image(path, sheet)


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
    for run, style in zip(steps, ["-", "--"]):
        x = np.array([entry["step"] for entry in steps[run]])
        for name in names:
            y = np.array([entry[name] * (1.0 if name == "total" else weights[name]) for entry in steps[run]])
            if not len(y):
                continue
            window = max(1, len(y) // 50)
            mean = np.convolve(y, np.ones(window) / window, mode="valid")
            axes.plot(x, y, style, color=colours[name], alpha=0.15, linewidth=0.8)
            axes.plot(x[window - 1:], mean, style, color=colours[name], linewidth=1.5,
                      label=f"{labels[run].split(':')[0]} {name}" + ("" if name == "total" else " (weighted)"))
    axes.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=1)
    axes.annotate("B: stage 2 starts", (boundary + 0.5, 1), xycoords=("data", "axes fraction"),
                  xytext=(4, -12), textcoords="offset points", color="grey")
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (running mean; raw values faint)")
    axes.set_title(f"{labels['A']} (solid)  vs  {labels['B']} (dashed)")
    axes.legend(ncol=2, fontsize="small")
    _replace(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
