"""Using a network that fast_train.py trained (Johnson et al.'s feed-forward style transfer): restore
it from a model folder, export it for serving (SavedModel) and mobile (TFLite), and stylize images,
folders and videos with one forward pass each. The image-optimisation algorithm of Gatys et al. is
stylize.py's, not this.
"""
import os
import sys
from pathlib import Path

import numpy as np

import fast_train
import files
import images
import vgg
from errors import UserError
from quiet_tf import tf
from transformer import MIN_SIZE, TransformNet

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


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
    settings = fast_train.load_settings(model_dir)
    network = vgg.load(settings.network) if settings.encoder else None  # the encoder's layer list
    net = TransformNet(settings.widths, settings.variant, dtype=dtype, encoder=settings.encoder,
                       network=network, identity_start=settings.identity_start)
    checkpoint = tf.train.Checkpoint(network=net)
    fast_train.restore_intact(lambda path: checkpoint.restore(path).expect_partial(),
                              Path(model_dir) / fast_train.CHECKPOINTS)
    return net


def export(model_dir):
    """Write saved_model/ and model.tflite from the latest checkpoint; returns their paths. Both take
    any batch and image size (TFLite: resize the input tensor, then allocate)."""
    model_dir = Path(model_dir)
    module = Stylize(restore_network(model_dir))
    saved = model_dir / fast_train.SAVED_MODEL
    files.write_atomic(saved, lambda temporary: tf.saved_model.save(
        module, str(temporary), signatures={"serving_default": module.serve}), folder=True)
    tflite = model_dir / fast_train.TFLITE_FILE
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
        path = model if (model / "saved_model.pb").is_file() else model / fast_train.SAVED_MODEL
        dtype = vgg.resolve_precision(precision)
        if dtype != "float32" and not ((model / fast_train.SETTINGS_FILE).is_file() and
                                       tf.train.latest_checkpoint(model / fast_train.CHECKPOINTS)):
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
                if not ((model / fast_train.SETTINGS_FILE).is_file() and any((model / fast_train.CHECKPOINTS).glob("*.index"))):
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
    _check_size(f"input image {source}", *image.shape[:2])
    result = _restore_colors(stylizer(image[np.newaxis])[0], image, preserve_colors)
    return images.save_result(output, result, overwrite=overwrite)


def _check_size(what, height, width):
    if min(height, width) < MIN_SIZE:
        raise UserError(f"{what} is {width}x{height} px; the network needs at least {MIN_SIZE} px on "
                        f"each side")


def folder_outputs(source, output):
    """{input image: output path}, mirroring the folder's layout; an output keeps the input's format
    where it can be written, else becomes PNG, under a name of its own: two inputs never share an
    output."""
    paths = images.find_images(source, "input folder")
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
                   report=lambda done, total, text: None):
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
        report(written + len(skipped), len(pairs), f"{written + len(skipped)}/{len(pairs)} images")

    for path, target in pairs.items():
        try:
            image = images.load_image(path, "input image")
            _check_size(f"input image {path}", *image.shape[:2])
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
                  report=lambda done, total, text: None):
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
    _check_size(f"input video {source}", height, width)
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
            report(count, expected if expected != "?" else None, f"frame {count}/{expected}")

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
