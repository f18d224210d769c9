"""Fast style transfer, training (Johnson, Alahi & Fei-Fei 2016): train a TransformNet for one style
with perceptual losses through the VGG of the `.mat` file; fast_apply.py uses the trained network
(export, images, folders, videos).

A model folder holds everything of one training:
    training.json   the settings, so that --resume and export rebuild the same network
    checkpoints/    network, optimizer, step and data position (tf.train.CheckpointManager)
    previews/       a few fixed images stylized every --preview-every steps
    losses.jsonl    the loss terms of every step, one JSON line each
    losses.png      the same as a picture (weighted terms, log scale), redrawn every --print-every steps
    saved_model/    the exported network, which `fast_style.py stylize` loads
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
import grids
import images
import losses
from adam import Adam
from errors import UserError
from quiet_tf import tf
from transformer import JOHNSON_WIDTHS, VARIANTS, TransformNet, encoder_layers, min_size as generator_min_size
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

PREVIEW_COUNT = 3
# Keras' default epsilon, which trainings had while they used Keras' Adam: one resumed from such a
# checkpoint goes on as it began.
ADAM_EPSILON = 1e-7
MODEL_FILES = SETTINGS_FILE, CHECKPOINTS, PREVIEWS, SAVED_MODEL, TFLITE_FILE, LOSSES_FILE, LOSS_PLOT = (
    "training.json", "checkpoints", "previews", "saved_model", "model.tflite", "losses.jsonl",
    "losses.png")


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
    identity_start: bool = False  # the generator starts as the identity (transformer.TransformNet)

    def with_defaults(self, network):
        """Fill in what was left None from the recipe of the loaded network: lengstrom's for VGG19
        (it has conv5_4), the paper's for any other VGG."""
        recipe = LENGSTROM if "conv5_4" in network.layer_names else PAPER
        return dataclasses.replace(
            self, content_layers=self.content_layers or dict.fromkeys(recipe.content_layers, 1.0),
            style_layers=self.style_layers or channel_weighted(network, recipe.style_layers),
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
        # The loss network checks its own layers' sizes; shallow style layers may allow less than this.
        smallest = generator_min_size(network, self.encoder)
        if self.image_size < smallest:
            raise UserError(f"--image-size must be at least {smallest} for the generator"
                            + (f" with --encoder {self.encoder}" if self.encoder else "")
                            + f", not {self.image_size}")

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


def channel_weighted(network, layers):
    """{layer: 1/C^2} (C: the channels of the convolution before it), the recipes' weighting of style
    layers, so that other layers weighted alike take the recipes' style weights on the same scale."""
    return {name: 1.0 / network.layers[network.index(name) - 1].kernel.shape[3] ** 2 for name in layers}


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
        self.paths = [str(p) for p in images.find_images(folder)]
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
        self.vgg.check_size("training crop", settings.image_size, settings.image_size,
                            f"--image-size must be at least {self.vgg.min_size}, or use shallower layers")
        self.vgg.check_size("style image", *style_image.shape[:2], "use a larger style image or "
                            "--style-size, or shallower layers")
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
                                    encoder=settings.encoder, network=network,
                                    identity_start=settings.identity_start)
            shared = {variable.ref() for variable in self.net.encoder_variables}
            self.generator_variables = [variable for variable in self.net.trainable_variables
                                        if variable.ref() not in shared]
            self.optimizer = Adam(self.generator_variables, settings.learning_rate, epsilon=ADAM_EPSILON)
            self.encoder_optimizer = None
            if shared:
                self.encoder_optimizer = Adam(self.net.encoder_variables, settings.stage2_learning_rate,
                                              epsilon=ADAM_EPSILON)
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
            self.optimizer.apply(gradients[:count])
            if shared:
                self.encoder_optimizer.apply(gradients[count:])
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
        present = {_short_name(device.name) for device in tf.config.list_logical_devices()}
        missing = [name for name in map(_short_name, devices) if name not in present]
        if missing:
            raise UserError(f"--devices names {', '.join(missing)}, which this machine does not have (it "
                            f"has {', '.join(sorted(present))}); name those or leave --devices out")
        return tf.distribute.MirroredStrategy(devices)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _short_name(device):
    """'/device:GPU:0', '/gpu:0' -> 'gpu:0'."""
    spec = tf.DeviceSpec.from_string(device)
    return f"{spec.device_type.lower()}:{spec.device_index}"


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
        self.training = training
        self.manager = tf.train.CheckpointManager(_checkpoint(training, _optimizers(training)), folder,
                                                  max_to_keep=3)
        self.saved_step = None

    def restore_latest(self):
        if self.manager.latest_checkpoint or any(Path(self.manager.directory).glob("*.index")):
            restore_intact(self._restore, self.manager.directory)
            self.saved_step = int(self.training.step.numpy())

    def _restore(self, path):
        if not tf.train.load_checkpoint(path).has_tensor(KERAS_ADAM_KEY):
            self.manager.checkpoint.restore(path).assert_existing_objects_matched()
            return
        # Written while training used Keras' Adam: restore it into Keras' Adams on the same variables,
        # then carry their moments and step count over (Keras' are the same quantities).
        ours = _optimizers(self.training)
        with self.training.strategy.scope():
            keras = {name: tf.keras.optimizers.Adam() for name in ours}
            for name, optimizer in keras.items():
                optimizer.build(ours[name].targets)
        _checkpoint(self.training, keras).restore(path).assert_existing_objects_matched()
        for name, optimizer in keras.items():
            ours[name].iterations.assign(optimizer.iterations)
            for m, v, keras_m, keras_v in zip(ours[name].m, ours[name].v, optimizer._momentums,
                                              optimizer._velocities):
                m.assign(keras_m)
                v.assign(keras_v)

    def save(self):
        step = int(self.training.step.numpy())
        if self.saved_step != step:
            self.manager.save(checkpoint_number=step)
            self.saved_step = step


# In the checkpoints of trainings that used Keras' Adam (adam.Adam has no `_iterations`).
KERAS_ADAM_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


def _optimizers(training):
    """{checkpoint name: Adam} of a Training."""
    named = {"optimizer": training.optimizer, "encoder_optimizer": training.encoder_optimizer}
    return {name: optimizer for name, optimizer in named.items() if optimizer is not None}


def _checkpoint(training, optimizers):
    return tf.train.Checkpoint(network=training.net, step=training.step, position=training.position,
                               **optimizers)


def restore_intact(restore, folder):
    """Restore the newest checkpoint in `folder` that `restore(path)` reads without raising; a
    damaged newer one is passed over with a note (the earlier one loses at most --checkpoint-every
    steps). A UserError when none reads. Returns the path restored."""
    state = tf.train.get_checkpoint_state(str(folder))
    listed = list(state.all_model_checkpoint_paths) if state else []
    found = sorted({path[:-len(".index")] for path in map(str, Path(folder).glob("*.index"))},
                   key=_checkpoint_number)
    candidates = list(dict.fromkeys(reversed(listed + [p for p in found if p not in listed])))
    if not candidates:
        raise UserError(f"{Path(folder).parent} holds no checkpoint yet; train first")
    for number, path in enumerate(candidates):
        try:
            restore(path)
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


def train(settings, model_dir, network, resume=False, overwrite=False, checkpoint_every=500,
          preview_every=500, print_every=100, devices=None, stop=lambda: False,
          report=lambda step, steps, text, keep: None):
    """Train into `model_dir` (see the module docstring); returns a TrainResult.

    `stop()` is asked before every step (Ctrl-C); a checkpoint is saved every `checkpoint_every`
    steps, on stop and at the end, so an interrupted training loses at most that many steps.
    `report(step, steps, text, keep)` receives the progress line after every step, to keep every `print_every`.
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
            elapsed = time.perf_counter() - clock
            speed = f"{done * settings.batch_size / elapsed:.2f}" if done else "?"
            where = f"{step}/{total_steps}" + (f" stage {stage}" if settings.stage1_steps is not None else "")
            line = _progress_line(where, terms, total, speed, len(data.unreadable))
            keep = step % print_every == 0 or step == total_steps
            report(step, total_steps, line, keep)
            if keep:
                plot_losses(model_dir, settings)
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
    if chief and status != "done":
        plot_losses(model_dir, settings)  # up to the step it stopped at
    if not chief:
        shutil.rmtree(checkpoints.manager.directory, ignore_errors=True)
    elif status == "done":
        import fast_apply  # it imports this module for the model folder's layout
        fast_apply.export(model_dir)
    return TrainResult(status, int(training.step.numpy()), len(data.unreadable), chief and status == "done")


def _progress_line(where, terms, total, speed, unreadable):
    """The step's losses and pace; progress.Bar adds the time elapsed and the ETA."""
    terms_text = "  ".join(f"{name} {float(value):.4g}" for name, value in terms.items())
    skipped = f"  {unreadable} unreadable skipped" if unreadable else ""
    return f"step {where}  {terms_text}  total {float(total):.4g}  {speed} img/s{skipped}"


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


def plot_losses(model_dir, settings):
    """losses.png: the weighted loss terms and the total of losses.jsonl per step."""
    import plots
    entries = read_losses(model_dir)
    weights = {"content": settings.content_weight, "style": settings.style_weight,
               "pixel": settings.pixel_weight, "tv": settings.tv_weight}
    series = {name: [entry[name] * weight for entry in entries] for name, weight in weights.items()}
    series["total"] = [entry["total"] for entry in entries]
    plots.try_save_loss_plot(Path(model_dir) / LOSS_PLOT, [entry["step"] for entry in entries], series,
                             f"weighted loss terms of {Path(model_dir).name}", xlabel="step")


def save_preview(net, previews, path):
    """The fixed preview images above their stylizations, one picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stylized = net(tf.constant(previews)).numpy()
    images.save_image(path, grids.compose([list(previews), list(stylized)], gap=0))
