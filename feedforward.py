"""Fast style transfer (Johnson, Alahi & Fei-Fei 2016): train a TransformNet for one style with
perceptual losses through the VGG of the `.mat` file, then stylize images, folders and videos with
one forward pass each, and export the network for serving (SavedModel) and mobile (TFLite).

A model folder holds everything of one training:
    training.json   the settings, so that --resume and export rebuild the same network
    checkpoints/    network, optimizer, step and data position (tf.train.CheckpointManager)
    previews/       a few fixed images stylized every --preview-every steps
    losses.jsonl    the loss terms of every step, one JSON line each
    saved_model/    the exported network, which `stylize` loads
    model.tflite    the same for TensorFlow Lite
"""
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import files
import images
import losses
import progress
import vgg
from errors import UserError
from quiet_tf import tf
from transformer import JOHNSON_WIDTHS, MIN_SIZE, VARIANTS, TransformNet, encoder_layers
from vgg import VGG


@dataclass(frozen=True)
class Recipe:
    """Default layers and weights for a network family. Each style layer is weighted 1/C^2 (C: its
    channels), which turns the paper's sum over the C x C Gram entries into the mean that jcjohnson's
    and lengstrom's code take, so that their weights apply unchanged."""
    content_layers: tuple
    style_layers: tuple
    content_weight: float
    style_weight: float
    tv_weight: float


# Johnson et al.'s layers, with the weights of their code (jcjohnson/fast-neural-style: content 1,
# style 5, TV strength 1e-6 on a sum over the batch, 0.4 per value at 256 px and batch 4).
PAPER = Recipe(("relu2_2",), ("relu1_2", "relu2_2", "relu3_3", "relu4_3"), 1.0, 5.0, 0.4)
# lengstrom/fast-style-transfer's, for VGG19: its losses are these, term for term (TV up to its
# separate normalisation of the two directions).
LENGSTROM = Recipe(("relu4_2",), tuple(f"relu{i}_1" for i in range(1, 6)), 7.5, 100.0, 200.0)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
PREVIEW_COUNT = 3
MODEL_FILES = SETTINGS_FILE, CHECKPOINTS, PREVIEWS, SAVED_MODEL, TFLITE_FILE, LOSSES_FILE = (
    "training.json", "checkpoints", "previews", "saved_model", "model.tflite", "losses.jsonl")


@dataclass
class Settings:
    """What defines a training. Layers and weights left None take the network's defaults."""
    style: str
    data: str
    network: str
    variant: str = "improved"
    widths: tuple = JOHNSON_WIDTHS
    content_layers: dict | None = None  # {layer: weight}
    style_layers: dict | None = None
    content_weight: float | None = None
    style_weight: float | None = None
    pixel_weight: float = 0.0
    tv_weight: float | None = None
    image_size: int = 256
    style_size: int | None = None  # long side of the style image; None: --image-size
    batch_size: int = 4
    learning_rate: float = 1e-3
    epochs: int = 2
    steps: int | None = None  # overrides epochs
    seed: int = 0
    # The two-stage schedule: the generator's encoder is VGG's layers up to LAYER ("vgg:LAYER"), fixed
    # for the first stage1_steps steps, trained with the rest for the next stage2_steps (at their own
    # learning rate); the two set the length. None: Johnson's encoder; no stage 2.
    encoder: str | None = None
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    stage2_learning_rate: float = 1e-4

    def with_defaults(self, network):
        """Fill in what was left None from the recipe of the loaded network: lengstrom's for VGG19
        (it has conv5_4), the paper's for any other VGG."""
        recipe = LENGSTROM if "conv5_4" in network.layer_names else PAPER

        def channels(layer):  # of the convolution before a ReLU
            return network.layers[network.index(layer) - 1].kernel.shape[3]

        style_layers = {name: 1.0 / channels(name) ** 2 for name in recipe.style_layers}
        return dataclasses.replace(
            self, content_layers=self.content_layers or dict.fromkeys(recipe.content_layers, 1.0),
            style_layers=self.style_layers or style_layers,
            content_weight=_default(self.content_weight, recipe.content_weight),
            style_weight=_default(self.style_weight, recipe.style_weight),
            tv_weight=_default(self.tv_weight, recipe.tv_weight),
            style_size=self.style_size or self.image_size)

    def check(self, network):
        """A UserError for any setting that cannot train with `network` (a vgg.Network)."""
        if self.variant not in VARIANTS:
            raise UserError(f"variant must be one of {', '.join(VARIANTS)}, not '{self.variant}'")
        for value, option in ((self.image_size, "--image-size"), (self.batch_size, "--batch-size"),
                              (self.epochs, "--epochs"), (self.steps, "--steps")):
            if value is not None and value < 1:
                raise UserError(f"{option} must be a positive number, not {value}")
        if self.style_size is not None and self.style_size < 1:
            raise UserError(f"--style-size must be a positive number, not {self.style_size}")
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise UserError(f"--widths takes three positive channel counts, not {self.widths}")
        if self.learning_rate <= 0:
            raise UserError(f"--learning-rate must be positive, not {self.learning_rate}")
        weights = (self.content_weight, self.style_weight, self.pixel_weight, self.tv_weight)
        if min(weights) < 0:
            raise UserError("loss weights must not be negative")
        self._check_schedule(network)

    def _check_schedule(self, network):
        staged = self.stage1_steps is not None or self.stage2_steps is not None
        if self.encoder is not None:
            encoder_layers(network, self.encoder)
        elif staged:
            raise UserError("--stage1-steps and --stage2-steps schedule the layers that the generator "
                            "shares with the loss network: give --encoder vgg:LAYER, e.g. vgg:relu3_1")
        if not staged:
            return
        for value, option in ((self.stage1_steps, "--stage1-steps"), (self.stage2_steps, "--stage2-steps")):
            if value is None or value < 0:
                raise UserError(f"{option} must be 0 or a positive number, not {value}")
        if self.stage1_steps + self.stage2_steps < 1:
            raise UserError("--stage1-steps and --stage2-steps are both 0: nothing to train")
        if self.steps is not None:
            raise UserError(f"--stage1-steps {self.stage1_steps} and --stage2-steps {self.stage2_steps} "
                            f"set the length: drop --steps")
        if self.stage2_learning_rate <= 0:
            raise UserError(f"--stage2-learning-rate must be positive, not {self.stage2_learning_rate}")

    def total_steps(self, image_count):
        """The training's length: the two stages, --steps, or --epochs over `image_count` images."""
        if self.stage1_steps is not None:
            return self.stage1_steps + self.stage2_steps
        return self.steps or self.epochs * max(image_count // self.batch_size, 1)

    def stage(self, step):
        """The stage of the step after `step` steps: 2 (shared layers train) or 1 (they are fixed)."""
        return 2 if self.stage1_steps is not None and step >= self.stage1_steps else 1


def _default(value, default):
    return default if value is None else value


def save_settings(settings, model_dir):
    files.write_json(Path(model_dir) / SETTINGS_FILE, dataclasses.asdict(settings))


def check_model_folder(model_dir, resume, overwrite):
    """Refuse to mix two trainings in one folder: --resume continues, --overwrite starts over.
    Returns what a new training will delete."""
    folder = Path(model_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--model {folder} is a file; give a folder")
    held = [folder / name for name in MODEL_FILES if (folder / name).exists()]
    if resume:
        load_settings(folder)
    elif held and not overwrite:
        raise UserError(f"{folder} already holds a training; pass --resume to continue it, --overwrite "
                        f"to start over, or choose another --model folder")
    return held


def load_settings(model_dir):
    path = Path(model_dir) / SETTINGS_FILE
    if not path.is_file():
        raise UserError(f"{model_dir} holds no training ({SETTINGS_FILE} is missing); train one with "
                        f"`fast_style.py train --model {model_dir}`")
    try:
        return settings_from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                        f"it records how the network was trained, so restore it from a copy, or train "
                        f"again with --overwrite") from None


def settings_from_dict(values):
    """Settings from their JSON form (dataclasses.asdict), as training.json holds them."""
    return Settings(**{**values, "widths": tuple(values["widths"])})


def load_style(settings):
    """The style image at the size the training uses."""
    return images.fit_long_side(images.load_image(settings.style, "style image"), settings.style_size)


# ---------------------------------------------------------------------------------------------
# Data

def find_images(folder, what="data folder"):
    """Every image file under `folder` (recursive, sorted); a UserError when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} {folder} {'is a file' if folder.exists() else 'does not exist'}; "
                        f"give a folder of images")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise UserError(f"{what} {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def center_crop(image, size):
    """The middle square of an image whose short side is scaled to `size`."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    image = images.resize(image, max(size, round(height * scale)), max(size, round(width * scale)))
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


class TrainingImages:
    """The images of a folder as an endless stream of random crops, in batches.

    The stream visits the files in a new random order each epoch; position p of the stream is file
    order(p // n)[p % n], with its crop drawn from (seed, p). A checkpoint stores the next position,
    so a resumed training sees the same images and crops as an uninterrupted one. Files that cannot
    be read are skipped and counted.
    """

    def __init__(self, folder, image_size, seed):
        self.paths = [str(p) for p in find_images(folder)]
        self.image_size, self.seed = image_size, seed
        self.unreadable = set()
        self.previews = self._first_readable(PREVIEW_COUNT)

    def _first_readable(self, count):
        found, first_error = [], None
        for path in self.paths:
            try:
                found.append(center_crop(images.load_image(path), self.image_size))
            except UserError as error:
                self.unreadable.add(path)
                first_error = first_error or error
            if len(found) == count:
                return np.stack(found)
        if not found:
            raise UserError(f"none of the {len(self.paths)} image files in the data folder could be "
                            f"read (e.g. {first_error})")
        return np.stack(found)

    def _paths_from(self, start, pipeline, pipelines):
        """(position, path) from `start` on, for this input pipeline's share of the positions."""
        n = len(self.paths)
        position = start
        while True:
            epoch, first = divmod(position, n)
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            for index in range(first, n):
                if position % pipelines == pipeline:
                    yield position, self.paths[order[index]]
                position += 1

    def _read(self, path):
        path = path.numpy().decode()
        try:
            return images.load_image(path), True
        except UserError:
            self.unreadable.add(path)
            return np.zeros((1, 1, 3), np.float32), False

    def _crop(self, position, image):
        """Scale the short side to the crop size (as lengstrom's and PyTorch's examples), then crop."""
        size = self.image_size
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scaled = tf.cast(tf.math.ceil(shape * size / tf.reduce_min(shape)), tf.int32)
        image = tf.image.resize(image, tf.maximum(scaled, size), antialias=True)
        seed = tf.stack([tf.constant(self.seed, tf.int64), position])
        return tf.image.stateless_random_crop(image, [size, size, 3], seed=seed), position

    def dataset(self, batch_size, start=0, pipeline=0, pipelines=1):
        """Batches of (crops [batch, size, size, 3] in 0..255, their stream positions)."""
        def read(position, path):
            image, ok = tf.py_function(self._read, [path], [tf.float32, tf.bool])
            image.set_shape([None, None, 3])
            return position, image, ok

        positions = tf.data.Dataset.from_generator(
            lambda: self._paths_from(start, pipeline, pipelines),
            output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string)))
        return (positions.map(read, num_parallel_calls=tf.data.AUTOTUNE)
                .filter(lambda position, image, ok: ok)
                .map(lambda position, image, ok: self._crop(position, image),
                     num_parallel_calls=tf.data.AUTOTUNE)
                .batch(batch_size, drop_remainder=True)
                .prefetch(tf.data.AUTOTUNE))


# ---------------------------------------------------------------------------------------------
# Losses and the training step

class PerceptualLoss:
    """Johnson et al.'s loss terms of a stylized batch: feature (content) and Gram (style)
    reconstruction through the VGG, pixel loss and total variation, each per value (C*H*W)."""

    def __init__(self, network, style_image, settings):
        self.content_layers, self.style_layers = settings.content_layers, settings.style_layers
        self.weights = {"content": settings.content_weight, "style": settings.style_weight,
                        "pixel": settings.pixel_weight, "tv": settings.tv_weight}
        self.content_vgg = VGG(network, list(settings.content_layers), pooling="max")
        self.vgg = VGG(network, list(settings.content_layers) + list(settings.style_layers), pooling="max")
        if min(style_image.shape[:2]) < self.vgg.min_size or settings.image_size < self.vgg.min_size:
            raise UserError(f"the style image and --image-size must be at least {self.vgg.min_size} px "
                            f"for layer {self.vgg.layers[-1].name}")
        features = self.vgg(tf.constant(style_image[np.newaxis]))
        self.style_grams = {name: losses.gram_matrix(features[name], normalize=True)
                            for name in settings.style_layers}

    def terms(self, content, stylized):
        """{term: value before its weight} for batches of content images and their stylizations."""
        targets = self.content_vgg(content)
        features = self.vgg(stylized)
        return {
            "content": tf.add_n([w * losses.feature_reconstruction_loss(features[name], targets[name])
                                 for name, w in self.content_layers.items()]),
            "style": tf.add_n([w * losses.style_reconstruction_loss(features[name], self.style_grams[name])
                               for name, w in self.style_layers.items()]),
            "pixel": losses.feature_reconstruction_loss(stylized, content),  # the same, on pixels
            "tv": losses.total_variation_loss(stylized) / tf.cast(tf.size(stylized), tf.float32),
        }

    def total(self, terms):
        return tf.add_n([self.weights[name] * value for name, value in terms.items()])


class Training:
    """The network, Adam and the loss, and one training step over all devices of `strategy`.

    With a VGG encoder, the layers it shares with the loss network have an Adam of their own at
    --stage2-learning-rate (its own moments, from the first stage-2 step on); the rest of the
    generator keeps its Adam through both stages. The loss network is vgg.VGG on constants: no
    stage can change it.
    """

    def __init__(self, network, style_image, settings, strategy):
        self.strategy = strategy
        self.loss = PerceptualLoss(network, style_image, settings)
        with strategy.scope():
            self.net = TransformNet(settings.widths, settings.variant, seed=settings.seed,
                                    encoder=settings.encoder, network=network)
            shared = {variable.ref() for variable in self.net.encoder_variables}
            self.generator_variables = [variable for variable in self.net.trainable_variables
                                        if variable.ref() not in shared]
            self.optimizer = tf.keras.optimizers.Adam(settings.learning_rate)
            self.optimizer.build(self.generator_variables)
            self.encoder_optimizer = None
            if shared:
                self.encoder_optimizer = tf.keras.optimizers.Adam(settings.stage2_learning_rate)
                self.encoder_optimizer.build(self.net.encoder_variables)
            self.step = tf.Variable(0, dtype=tf.int64, name="step")
            self.position = tf.Variable(0, dtype=tf.int64, name="position")  # of the data stream

    @tf.function
    def train_step(self, batch, stage2=False):
        """One Adam step on a distributed batch; returns the mean loss terms, the total and the
        last stream position used on this worker. The shared layers take part only in `stage2`:
        in stage 1 they get no gradient at all."""
        def replica_step(crops, positions):
            with tf.GradientTape() as tape:
                stylized = self.net(crops, training=True)
                terms = self.loss.terms(crops, stylized)
                total = self.loss.total(terms)
                # Each replica's loss is its batch's mean; the optimizer sums the replicas' gradients.
                share = total / self.strategy.num_replicas_in_sync
            shared = list(self.net.encoder_variables) if stage2 else []
            gradients = tape.gradient(share, self.generator_variables + shared)
            count = len(self.generator_variables)
            self.optimizer.apply_gradients(zip(gradients[:count], self.generator_variables))
            if shared:
                self.encoder_optimizer.apply_gradients(zip(gradients[count:], shared))
            return terms, total, tf.reduce_max(positions)

        terms, total, last = self.strategy.run(replica_step, args=batch)
        mean = lambda value: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
        # This worker's last position: exact on one machine; with several, each worker takes every
        # n-th position, so the workers' last positions differ by less than a batch.
        last = tf.reduce_max(tf.stack(self.strategy.experimental_local_results(last)))
        return {name: mean(value) for name, value in terms.items()}, mean(total), last


def choose_strategy(devices=None):
    """MirroredStrategy over `devices` or all GPUs (when several), MultiWorkerMirroredStrategy when
    TF_CONFIG names several workers, else the default (one device)."""
    workers = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])
    if len(workers) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices:
        return tf.distribute.MirroredStrategy(devices)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy):
    """The worker that writes checkpoints, previews and the export: the only one, or worker 0."""
    resolver = strategy.cluster_resolver
    return resolver is None or not resolver.task_type or (resolver.task_type, resolver.task_id) in (
        ("chief", 0), ("worker", 0))


@dataclass
class TrainResult:
    status: str  # "done", "interrupted" or "diverged"
    step: int
    unreadable: int
    exported: bool  # by this worker (the chief, when training is done)


class Checkpoints:
    """The training's state (network, Adam, step, data position) in a folder; the last 3 are kept.
    The step decides the stage, so a resumed training goes on in the stage it was in."""

    def __init__(self, training, folder):
        self.step = training.step
        shared = {"encoder_optimizer": training.encoder_optimizer} if training.encoder_optimizer else {}
        checkpoint = tf.train.Checkpoint(network=training.net, optimizer=training.optimizer,
                                         step=training.step, position=training.position, **shared)
        self.manager = tf.train.CheckpointManager(checkpoint, folder, max_to_keep=3)
        self.saved_step = None

    def restore_latest(self):
        if self.manager.latest_checkpoint or any(Path(self.manager.directory).glob("*.index")):
            restore_intact(self.manager.checkpoint, self.manager.directory,
                           lambda status: status.assert_existing_objects_matched())
            self.saved_step = int(self.step.numpy())

    def save(self):
        if self.saved_step != int(self.step.numpy()):
            self.manager.save(checkpoint_number=int(self.step.numpy()))
            self.saved_step = int(self.step.numpy())


def train(settings, model_dir, network, resume=False, overwrite=False, checkpoint_every=500,
          preview_every=500, print_every=100, devices=None, stop=lambda: False,
          report=lambda line, keep: None):
    """Train into `model_dir` (see the module docstring); returns a TrainResult.

    `stop()` is asked before every step (Ctrl-C); a checkpoint is saved every `checkpoint_every`
    steps, on stop and at the end, so an interrupted training loses at most that many steps.
    `report(line, keep)` receives the progress line after every step, to keep every `print_every`.
    """
    strategy = choose_strategy(devices)  # before any other TensorFlow op (MultiWorkerMirroredStrategy)
    chief = _is_chief(strategy)  # the one worker that writes the model folder
    model_dir = Path(model_dir)
    previous = check_model_folder(model_dir, resume, overwrite) if chief else []
    settings.check(network)
    for value, option in ((checkpoint_every, "--checkpoint-every"), (preview_every, "--preview-every"),
                          (print_every, "--print-every")):
        if value < 1:
            raise UserError(f"{option} must be a positive number, not {value}")
    style_image = load_style(settings)
    data = TrainingImages(settings.data, settings.image_size, settings.seed)
    if settings.batch_size % strategy.num_replicas_in_sync:
        raise UserError(f"--batch-size {settings.batch_size} does not split evenly over "
                        f"{strategy.num_replicas_in_sync} devices")
    training = Training(network, style_image, settings, strategy)
    if chief:  # the inputs are good: now replace a previous training, or record a new length
        for path in [] if resume else previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        model_dir.mkdir(parents=True, exist_ok=True)
        save_settings(settings, model_dir)
    # Every worker takes part in saving (it is collective); only the chief's copy is kept.
    checkpoints = Checkpoints(training, model_dir / CHECKPOINTS if chief else Path(tempfile.mkdtemp()))
    if resume:
        checkpoints.restore_latest()
    log = LossLog(model_dir, int(training.step.numpy())) if chief else None
    total_steps = settings.total_steps(len(data.paths))

    def dataset_for(context):
        return data.dataset(context.get_per_replica_batch_size(settings.batch_size),
                            start=int(training.position.numpy()), pipeline=context.input_pipeline_id,
                            pipelines=context.num_input_pipelines)

    batches = iter(strategy.distribute_datasets_from_function(dataset_for))
    status, start_step, clock = "done", int(training.step.numpy()), None
    while int(training.step.numpy()) < total_steps:
        if stop():
            status = "interrupted"
            break
        stage = settings.stage(int(training.step.numpy()))
        try:
            terms, total, last = training.train_step(next(batches), stage2=stage == 2)
        except KeyboardInterrupt:  # a second Ctrl-C: this step is dropped, the last one is saved
            status = "interrupted"
            break
        if not np.isfinite(float(total)):
            status = "diverged"
            break
        training.step.assign_add(1)
        training.position.assign(last + 1)
        step = int(training.step.numpy())
        clock = clock or time.perf_counter()  # from the end of the first step, which also compiles
        if chief:
            log.write(step, stage, terms, total)  # a failing write is a warning (LossLog)
            done = step - start_step - 1  # timed steps
            elapsed, left = progress.eta(clock, done, total_steps - start_step - 1)
            speed = f"{done * settings.batch_size / elapsed:.2f}" if done else "?"
            where = f"{step}/{total_steps}" + (f" stage {stage}" if settings.stage1_steps is not None else "")
            line = _progress_line(where, terms, total, speed, elapsed, left, len(data.unreadable))
            report(line, keep=step % print_every == 0 or step == total_steps)
        if step % checkpoint_every == 0:
            checkpoints.save()
        if chief and step % preview_every == 0:
            try:
                save_preview(training.net, data.previews, model_dir / PREVIEWS / f"step_{step:06d}.jpg")
            except OSError as error:
                print(f"\nwarning: the preview of step {step} could not be written "
                      f"({files.describe(error)}); training goes on", file=sys.stderr)
    if status != "diverged":
        checkpoints.save()
    if not chief:
        shutil.rmtree(checkpoints.manager.directory, ignore_errors=True)
    elif status == "done":
        export(model_dir)
    return TrainResult(status, int(training.step.numpy()), len(data.unreadable), chief and status == "done")


def _progress_line(where, terms, total, speed, elapsed, left, unreadable):
    terms_text = "  ".join(f"{name} {float(value):.4g}" for name, value in terms.items())
    skipped = f"  {unreadable} unreadable skipped" if unreadable else ""
    return (f"step {where}  {terms_text}  total {float(total):.4g}  {speed} img/s  "
            f"{progress.duration(elapsed)} elapsed, ETA {progress.duration(left)}{skipped}")


class LossLog:
    """losses.jsonl: {"step", "stage", each loss term before its weight, "total"} per step. A resumed
    training drops the lines after its checkpoint's step, which it computes again."""

    def __init__(self, model_dir, step):
        self.path = Path(model_dir) / LOSSES_FILE
        if self.path.exists():
            kept = [entry for entry in read_losses(model_dir) if entry["step"] <= step]
            files.write_text(self.path, "".join(json.dumps(entry) + "\n" for entry in kept))

    def write(self, step, stage, terms, total):
        values = {name: float(value) for name, value in terms.items()}
        try:
            with open(self.path, "a") as log:
                log.write(json.dumps({"step": step, "stage": stage, **values, "total": float(total)}) + "\n")
        except OSError as error:  # the checkpoints matter more: warn once a step, go on
            print(f"\nwarning: {self.path} could not be written ({files.describe(error)}); training "
                  f"goes on", file=sys.stderr)


def read_losses(model_dir):
    """The lines of a model folder's losses.jsonl, as dicts; a line cut short by a crash is dropped."""
    path = Path(model_dir) / LOSSES_FILE
    entries = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def save_preview(net, previews, path):
    """The fixed preview images above their stylizations, one picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stylized = net(tf.constant(previews)).numpy()
    images.save_image(path, np.concatenate([np.concatenate(list(previews), axis=1),
                                            np.concatenate(list(stylized), axis=1)], axis=0))


# ---------------------------------------------------------------------------------------------
# Export

class Stylize(tf.Module):
    """What the SavedModel serves: float32 [batch, height, width, 3] RGB 0..255, any size, in;
    the stylized images, same shape and range, out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve(self, images):
        return {"stylized": self.net(images)}


def restore_network(model_dir, dtype=tf.float32):
    """The network of the latest checkpoint in `model_dir`, built as its training.json says, with
    its convolutions in `dtype` (the weights stay float32)."""
    settings = load_settings(model_dir)
    network = vgg.load(settings.network) if settings.encoder else None  # the encoder's layer list
    net = TransformNet(settings.widths, settings.variant, dtype=dtype, encoder=settings.encoder,
                       network=network)
    restore_intact(tf.train.Checkpoint(network=net), Path(model_dir) / CHECKPOINTS,
                   lambda status: status.expect_partial())
    return net


def restore_intact(checkpoint, folder, check=lambda status: status):
    """Restore the newest checkpoint in `folder` that reads; a damaged newer one is passed over
    with a note (the earlier one loses at most --checkpoint-every steps). A UserError when none
    reads. Returns the path restored."""
    state = tf.train.get_checkpoint_state(str(folder))
    listed = list(state.all_model_checkpoint_paths) if state else []
    found = sorted({path[:-len(".index")] for path in map(str, Path(folder).glob("*.index"))},
                   key=_checkpoint_number)
    candidates = list(dict.fromkeys(reversed(listed + [p for p in found if p not in listed])))
    if not candidates:
        raise UserError(f"{Path(folder).parent} holds no checkpoint yet; train first")
    for number, path in enumerate(candidates):
        try:
            check(checkpoint.restore(path))
        except Exception as error:  # TensorFlow raises OpError, IndexError, ValueError, AssertionError
            reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
            print(f"note: checkpoint {path} is damaged ({reason}); trying an earlier one", file=sys.stderr)
            continue
        if number:
            print(f"note: using the earlier intact checkpoint {path}", file=sys.stderr)
        return path
    raise UserError(f"every checkpoint in {folder} is damaged; train again with --overwrite")


def _checkpoint_number(path):
    tail = path.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def export(model_dir):
    """Write saved_model/ and model.tflite from the latest checkpoint; returns their paths. Both take
    any batch and image size (TFLite: resize the input tensor, then allocate)."""
    model_dir = Path(model_dir)
    module = Stylize(restore_network(model_dir))
    saved = model_dir / SAVED_MODEL
    files.write_atomic(saved, lambda temporary: tf.saved_model.save(
        module, str(temporary), signatures={"serving_default": module.serve}), folder=True)
    tflite = model_dir / TFLITE_FILE
    converted = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
    files.write_atomic(tflite, lambda temporary: Path(temporary).write_bytes(converted))
    return saved, tflite


# ---------------------------------------------------------------------------------------------
# Stylizing

class Stylizer:
    """A trained network; calls take and return float32 batches. In float32 it runs the exported
    SavedModel; in a reduced precision it rebuilds the network from the model folder's latest
    checkpoint (bfloat16 is 2.8x faster on a CPU with AMX: README, "Speed")."""

    def __init__(self, model, precision="float32"):
        model = Path(model)
        path = model if (model / "saved_model.pb").is_file() else model / SAVED_MODEL
        dtype = vgg.resolve_precision(precision)
        if dtype != "float32" and not ((model / SETTINGS_FILE).is_file() and
                                       tf.train.latest_checkpoint(model / CHECKPOINTS)):
            if precision != "auto":
                raise UserError(f"--precision {precision} rebuilds the network from the checkpoints of "
                                f"a model folder, and {model} has none; leave --precision out to run "
                                f"its exported float32 network")
            dtype = "float32"  # auto: a bare SavedModel runs as exported
        self.precision = dtype
        if dtype == "float32":
            if not (path / "saved_model.pb").is_file():
                what = "does not exist" if not model.exists() else "holds no exported network (saved_model/)"
                raise UserError(f"model {model} {what}; train one with `fast_style.py train`, or run "
                                f"`fast_style.py export --model {model}` after an interrupted training")
            try:
                serve = tf.saved_model.load(str(path)).signatures["serving_default"]
                self.run = lambda batch: serve(images=batch)["stylized"]
            except Exception as error:  # protobuf, TensorFlow and KeyError alike: a damaged export
                reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
                if not ((model / SETTINGS_FILE).is_file() and any((model / CHECKPOINTS).glob("*.index"))):
                    raise UserError(f"the exported network in {path} is damaged ({reason}); export it "
                                    f"again from its model folder or train again") from None
                print(f"note: the exported network in {path} is damaged ({reason}); using the model "
                      f"folder's checkpoint instead (`fast_style.py export --model {model}` writes it "
                      f"again)", file=sys.stderr)
                self.run = self._from_checkpoint(model, "float32")
        else:
            self.run = self._from_checkpoint(model, dtype)
        self.reduced = False  # set when an image had to be stylized smaller for lack of memory

    @staticmethod
    def _from_checkpoint(model, dtype):
        net = restore_network(model, dtype)
        return tf.function(net.__call__, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32)])  # any size, as the SavedModel

    def __call__(self, batch):
        """Stylize a batch of equal-sized images; an image too large for memory is stylized at half
        the size (repeatedly if needed) and scaled back."""
        try:
            return self.run(tf.constant(batch, tf.float32)).numpy()
        except (tf.errors.ResourceExhaustedError, MemoryError):
            if len(batch) > 1:
                return np.concatenate([self(batch[i:i + 1]) for i in range(len(batch))])
            height, width = batch.shape[1:3]
            if min(height, width) // 2 < MIN_SIZE:
                raise
            self.reduced = True
            small = images.resize(batch[0], height // 2, width // 2)
            return images.resize(self(small[np.newaxis])[0], height, width)[np.newaxis]


def _restore_colors(result, original, preserve_colors):
    """--preserve-colors: the result's luminance with the original's colours."""
    return images.with_colors_of(result, original) if preserve_colors else result


def stylize_image(stylizer, source, output, overwrite=False, preserve_colors=False):
    image = images.load_image(source, "input image")
    _check_size(image, source)
    result = _restore_colors(stylizer(image[np.newaxis])[0], image, preserve_colors)
    return images.save_result(output, result, overwrite=overwrite)


def _check_size(image, source):
    if min(image.shape[:2]) < MIN_SIZE:
        raise UserError(f"input image {source} is {image.shape[1]}x{image.shape[0]} px; the network "
                        f"needs at least {MIN_SIZE} px on each side")


def folder_outputs(source, output):
    """{input image: output path}, mirroring the folder's layout; an output keeps the input's format
    where it can be written, else becomes PNG, under a name of its own: two inputs never share an
    output."""
    paths = find_images(source, "input folder")
    mirrored = {path: Path(output) / path.relative_to(source) for path in paths}
    kept = {path: target for path, target in mirrored.items() if target.suffix.lower() in images.WRITABLE}
    taken = set(kept.values())
    converted = {}
    for path in (path for path in paths if path not in kept):
        target = mirrored[path].with_suffix(".png")
        if target in taken:  # photo.png and photo.gif: the GIF's result is photo_gif.png
            target = target.with_name(f"{path.stem}_{path.suffix.lstrip('.').lower()}.png")
        first, number = target, 1
        while target in taken:
            target, number = first.with_name(f"{first.stem}_{number}.png"), number + 1
        taken.add(target)
        converted[path] = target
    return {path: kept.get(path) or converted[path] for path in paths}


def stylize_folder(stylizer, source, output, batch_size=4, overwrite=False, preserve_colors=False,
                   report=lambda line: None):
    """Stylize every image of a folder, equal sizes together in batches; returns (written, skipped)."""
    pairs = folder_outputs(source, output)
    existing = [str(target) for target in pairs.values() if target.exists()]
    if existing and not overwrite:
        raise UserError(f"{len(existing)} of the outputs already exist (e.g. {existing[0]}); pass "
                        f"--overwrite to replace them or choose another --output folder")
    pending, written, skipped = {}, 0, []

    def flush(shape):
        nonlocal written
        batch = pending.pop(shape)
        results = stylizer(np.stack([image for _, _, image in batch]))
        for (path, target, image), result in zip(batch, results):
            target.parent.mkdir(parents=True, exist_ok=True)
            images.save_image(target, _restore_colors(result, image, preserve_colors))
            written += 1
        report(f"{written + len(skipped)}/{len(pairs)} images")

    for path, target in pairs.items():
        try:
            image = images.load_image(path, "input image")
            _check_size(image, path)
        except UserError as error:
            skipped.append(str(error))
            continue
        pending.setdefault(image.shape, []).append((path, target, image))
        if len(pending[image.shape]) == batch_size:
            flush(image.shape)
    for shape in list(pending):
        flush(shape)
    return written, skipped


def _move_finished(temporary, output):
    """Rename a finished video into place; where that fails, it stays beside it under a name that
    says so (its frames are on disk already) and a warning names it. Returns where it is."""
    try:
        os.replace(temporary, output)
        return output
    except OSError as error:
        fallback = output.with_name(f"{output.stem}.unsaved-{os.getpid()}{output.suffix}")
        os.replace(temporary, fallback)
        print(f"warning: the video could not be written to {output} ({files.describe(error)}); it is "
              f"saved as {fallback} instead", file=sys.stderr)
        return fallback


def _until_unreadable(frames, broken):
    """The frames that ffmpeg can decode; a decoding error ends them (and is noted in `broken`)."""
    try:
        yield from frames
    except (RuntimeError, OSError) as error:
        broken.append(error)


class TruncatedVideo(Exception):
    """Fewer frames than the video's header promises: the output holds the ones that could be read."""

    def __init__(self, count, expected, path):
        super().__init__(f"{count} of {expected} frames")
        self.count, self.expected, self.path = count, expected, path


def stylize_video(stylizer, source, output, batch_size=4, overwrite=False, preserve_colors=False,
                  report=lambda line: None):
    """Stylize a video frame by frame, keeping its frame rate and its sound; returns the frame count
    and the path written. The video is written beside `output` and renamed when complete, as images
    are (to a fallback name beside it when that rename fails)."""
    import imageio_ffmpeg  # only videos need it

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise UserError(f"input video {source} does not exist")
    if output.suffix.lower() not in VIDEO_EXTENSIONS:
        raise UserError(f"output {output} needs a video extension ({', '.join(VIDEO_EXTENSIONS)})")
    files.check_new(output, overwrite)
    try:
        frames = imageio_ffmpeg.read_frames(str(source))
        meta = next(frames)
    except (RuntimeError, OSError, StopIteration) as error:
        raise UserError(f"input video {source} cannot be read ({str(error).splitlines()[0]})") from None
    width, height = meta["size"]
    if min(width, height) < MIN_SIZE:
        raise UserError(f"input video {source} is {width}x{height} px; the network needs at least "
                        f"{MIN_SIZE} px on each side")
    expected = round(meta.get("duration", 0) * meta["fps"]) or "?"
    temporary = str(output.with_name(f".{output.stem}.{os.getpid()}{output.suffix}"))
    writer = imageio_ffmpeg.write_frames(temporary, (width, height), fps=meta["fps"], macro_block_size=2,
                                         audio_path=str(source) if meta.get("audio_codec") else None,
                                         output_params=["-loglevel", "error"])
    count = 0
    try:
        writer.send(None)  # start ffmpeg

        def write(batch):
            nonlocal count
            batch = np.stack(batch)
            for frame, result in zip(batch, stylizer(batch)):
                result = _restore_colors(result, frame, preserve_colors)
                writer.send(np.clip(np.round(result), 0, 255).astype(np.uint8))
            count += len(batch)
            report(f"frame {count}/{expected}")

        batch, broken = [], []
        for raw in _until_unreadable(frames, broken):
            batch.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3).astype(np.float32))
            if len(batch) == batch_size:
                write(batch)
                batch = []
        if batch:
            write(batch)
        writer.close()
        output = _move_finished(temporary, output)
        if broken or (isinstance(expected, int) and count < expected - 1):  # rounding: 1 frame
            raise TruncatedVideo(count, expected, output)
    except BaseException:
        writer.close()
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return count, output


# ---------------------------------------------------------------------------------------------
# Speed

def benchmark_stylize(size=512, precision="float32", jit_compile=False, widths=JOHNSON_WIDTHS,
                      variant="improved", repeats=10, warmup=3):
    """Seconds to stylize one size x size image (untrained weights time the same): median and best
    of `repeats` calls after `warmup` calls."""
    net = TransformNet(widths, variant, dtype=precision)
    any_size = tf.TensorSpec([None, None, None, 3], tf.float32)  # as the SavedModel that `stylize` runs
    run = tf.function(lambda batch: net(batch), input_signature=[any_size], jit_compile=jit_compile)
    batch = tf.random.uniform([1, size, size, 3], 0, 255, seed=0)
    return _time(lambda: run(batch).numpy(), repeats, warmup)


def benchmark_training(network, image_size=256, batch_size=4, steps=5, warmup=2, variant="improved",
                       widths=JOHNSON_WIDTHS, devices=None):
    """Training steps per second (median and best of `steps`) on random images with the default
    layers of `network` (a vgg.Network)."""
    settings = Settings(style="", data="", network=network.path, variant=variant, widths=widths,
                        image_size=image_size, batch_size=batch_size).with_defaults(network)
    rng = np.random.default_rng(0)
    style = rng.uniform(0, 255, (image_size, image_size, 3)).astype(np.float32)
    strategy = choose_strategy(devices)
    training = Training(network, style, settings, strategy)
    crops = tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3)), tf.float32)
    data = tf.data.Dataset.from_tensors((crops, tf.zeros([batch_size], tf.int64))).repeat()
    batches = iter(strategy.experimental_distribute_dataset(data))
    seconds = _time(lambda: float(training.train_step(next(batches))[1]), steps, warmup)
    return {"steps_per_second": 1 / seconds["median"], "best_steps_per_second": 1 / seconds["best"]}


def _time(call, repeats, warmup):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"median": float(np.median(times)), "best": min(times)}
