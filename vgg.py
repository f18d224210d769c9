"""VGG from MatConvNet's `imagenet-vgg-verydeep-19.mat`: load the file, build the graph, fetch the file.

The loader reads both published layouts of the file by field name (see README, "Weights"). The graph
is built layer by layer from the file's own layer list, as the TF1 implementations did, so the VGG16
file works as well; it stops at the deepest layer a run needs.

    python vgg.py download      fetch the VGG19 file into weights/ (resumable, checksum-verified)
"""
import hashlib
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import cli
import download
import files
from errors import UserError
from presets import POOLINGS, PRECISIONS
from quiet_tf import tf

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_PATH = WEIGHTS_DIR / "imagenet-vgg-verydeep-19.mat"
URL = "https://www.vlfeat.org/matconvnet/models/imagenet-vgg-verydeep-19.mat"
SHA256 = "abdb57167f82a2a1fbab1e1c16ad9373411883f262a1a37ee5db2e6fb0044695"
HOW_TO_GET = (f"run `python vgg.py download` to fetch {DEFAULT_PATH.name} into weights/, "
              f"or download {URL} (SHA256 {SHA256}) by hand")

# The layer types the graph can run; a file's list is cut at the first other type (fc8's softmax).
SUPPORTED_TYPES = ("conv", "relu", "pool")


@dataclass(frozen=True)
class Layer:
    """One entry of the file's layer list, with what the graph needs of it."""
    name: str
    type: str
    kernel: np.ndarray | None = None  # [height, width, in, out], as stored
    bias: np.ndarray | None = None  # [out]
    pad: tuple = (0, 0, 0, 0)  # top, bottom, left, right
    stride: tuple = (1, 1)
    pool_size: tuple = (2, 2)


@dataclass(frozen=True)
class Network:
    """The layers and the mean pixel of a `.mat` file.

    `layers` lists every layer of the file; the feature extractor is the first `feature_count` of
    them (up to the last pooling layer: conv1_1 … pool5). The classifier after it carries no weights
    here, since style transfer never runs it.
    """
    path: str
    layers: tuple
    mean_pixel: np.ndarray  # RGB, subtracted from images in 0..255
    feature_count: int
    sha256: str = ""  # of the .mat file, as recorded when its cache was made
    normalization: str = ""  # how the weights were rescaled, if they were (see normalize())

    @property
    def layer_names(self):
        return [layer.name for layer in self.layers]

    @property
    def usable_names(self):
        return self.layer_names[:self.feature_count]

    def index(self, name):
        """Position of a layer; a clear error that lists the usable names when it is absent."""
        if name not in self.layer_names:
            raise UserError(f"layer '{name}' is not in {self.path}; its layers are: "
                            f"{', '.join(self.usable_names)}")
        i = self.layer_names.index(name)
        if i >= self.feature_count:
            raise UserError(f"layer {name} of {self.path} belongs to the classifier after "
                            f"{self.layers[self.feature_count - 1].name} (type '{self.layers[i].type}'), "
                            f"which style transfer does not use; use one of: {', '.join(self.usable_names)}")
        return i

    def min_size(self, name):
        """Smallest image side for which layer `name` still sees at least one whole pixel."""
        size = 1
        for layer in reversed(self.layers[:self.index(name) + 1]):
            if layer.type == "conv":
                size = (size - 1) * layer.stride[0] + layer.kernel.shape[0] - layer.pad[0] - layer.pad[1]
            elif layer.type == "pool":
                size *= layer.stride[0]
        return max(size, 1)


# ---------------------------------------------------------------------------------------------
# Loading the .mat file

def _text(value):
    """A MATLAB char array as loadmat returns it (nested 1-element arrays) as a Python string."""
    while isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        value = value.ravel()[0]
    return str(value)


def _numbers(value, count, name):
    """A scalar or vector field as `count` integers (MatConvNet allows a scalar for all)."""
    values = [int(v) for v in np.asarray(value, dtype=np.float64).ravel()]
    if len(values) == 1:
        return tuple(values * count)
    if count == 4 and len(values) == 2:  # [vertical horizontal]
        return (values[0], values[0], values[1], values[1])
    if len(values) != count:
        raise ValueError(f"field {name} has {len(values)} values, expected {count}")
    return tuple(values)


def _struct(item):
    """A cell element of `layers` ((1, 1) structured array) as a dict of its fields, by name."""
    struct = np.asarray(item)
    if struct.dtype.names is None:
        raise ValueError("a layer is not a struct")
    struct = struct.ravel()[0]
    return {name: struct[name] for name in struct.dtype.names}


def _parse_layer(fields):
    name, kind = _text(fields["name"]), _text(fields["type"])
    if kind == "conv":
        weights = np.asarray(fields["weights"]).ravel()
        kernel = np.asarray(weights[0], dtype=np.float32)
        bias = np.asarray(weights[1], dtype=np.float32).reshape(-1)
        if kernel.ndim == 3:  # MATLAB drops a trailing singleton dimension (one output channel)
            kernel = kernel[..., np.newaxis]
        if kernel.ndim == 2:
            kernel = kernel[..., np.newaxis, np.newaxis]
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise ValueError(f"conv layer {name} has kernels {kernel.shape} and biases {bias.shape}")
        return Layer(name, kind, kernel=kernel, bias=bias,
                     pad=_numbers(fields.get("pad", 0), 4, "pad"),
                     stride=_numbers(fields.get("stride", 1), 2, "stride"))
    if kind == "pool":
        return Layer(name, kind, pad=_numbers(fields.get("pad", 0), 4, "pad"),
                     stride=_numbers(fields.get("stride", 2), 2, "stride"),
                     pool_size=_numbers(fields.get("pool", 2), 2, "pool"))
    return Layer(name, kind)


def _mean_pixel(data):
    """The mean pixel: `meta.normalization` (current layout) or `normalization` (old layout)."""
    if "meta" in data:
        normalization = _struct(_struct(data["meta"])["normalization"])
    else:
        normalization = _struct(data["normalization"])
    average = np.asarray(normalization["averageImage"], dtype=np.float64)
    if average.ndim == 3:  # an image (old layout: 224x224x3): its mean over the spatial axes
        average = average.mean(axis=(0, 1))
    average = average.reshape(-1)
    if average.shape != (3,):
        raise ValueError(f"averageImage has {average.size} values, expected 3 (RGB)")
    return average.astype(np.float32)


def _check_header(path):
    with open(path, "rb") as f:
        head = f.read(128)
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        raise UserError(f"{path} is a web page, not a MatConvNet .mat file (a failed download?): "
                        f"delete it and {HOW_TO_GET}")
    if head.startswith(b"MATLAB 7.3"):
        raise UserError(f"{path} is a MATLAB v7.3 (HDF5) file; the MatConvNet VGG files are MATLAB v5: "
                        f"{HOW_TO_GET}")
    if not head.startswith(b"MATLAB 5.0 MAT-file"):
        raise UserError(f"{path} is not a MATLAB .mat file (expected MatConvNet's "
                        f"imagenet-vgg-verydeep-19.mat): {HOW_TO_GET}")


def load(path):
    """Read a MatConvNet SimpleNN VGG file into a Network, or fail with one clear UserError.

    The feature layers' weights are cached beside the file (see `_cache_folder`), so later runs
    read 80 MB instead of parsing 510 MB, which saves start-up time and peak memory.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"network file {path} {what}: {HOW_TO_GET}")
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": CACHE_FORMAT}
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    network = _parse(path)
    network = Network(network.path, network.layers, network.mean_pixel, network.feature_count,
                      download.file_sha256(path))
    _write_cache(network, key)
    return network


def _parse(path):
    try:
        _check_header(path)
        import scipy.io  # a second of imports, which `--help` need not wait for
        data = scipy.io.loadmat(str(path))
    except UserError:
        raise
    except Exception as error:  # scipy raises many kinds on a damaged file; all mean the same here
        raise UserError(f"{path} ({path.stat().st_size:,} bytes) could not be read as a .mat file "
                        f"({type(error).__name__}: {error}); it is probably truncated or corrupt: delete "
                        f"it and {HOW_TO_GET}") from None
    try:
        if "layers" not in data:
            keys = ", ".join(k for k in data if not k.startswith("__")) or "nothing"
            raise ValueError(f"it holds {keys} but no 'layers' list")
        cells = np.asarray(data["layers"]).ravel()
        if cells.dtype != object:
            raise ValueError("its 'layers' is a struct array (a DagNN model?), not a cell array of "
                             "SimpleNN layers")
        layers = [_parse_layer(_struct(cell)) for cell in cells]
        mean = _mean_pixel(data)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise UserError(f"{path} is not a MatConvNet VGG network: {error}. Expected "
                        f"imagenet-vgg-verydeep-19.mat: {HOW_TO_GET}") from None
    convs = [layer for layer in layers if layer.type == "conv"]
    if not convs or convs[0].kernel.shape[2] != 3:
        raise UserError(f"{path} is not a MatConvNet VGG network: its first layer does not take an RGB "
                        f"image. Expected imagenet-vgg-verydeep-19.mat: {HOW_TO_GET}")
    count = _feature_count(layers)
    _check_fit(path, layers[:count])
    layers[count:] = [Layer(layer.name, layer.type) for layer in layers[count:]]  # drop fc weights
    return Network(str(path), tuple(layers), mean, count)


def _check_fit(path, layers):
    """The feature layers must fit together, or TensorFlow fails later with a shape error: each
    convolution takes the channels the previous one gives, and strides, windows and padding are
    sensible numbers."""
    channels = 3
    for layer in layers:
        problem = None
        if min(layer.stride) < 1 or min(layer.pad) < 0:
            problem = f"stride {list(layer.stride)} and padding {list(layer.pad)}"
        elif layer.type == "pool" and min(layer.pool_size) < 1:
            problem = f"a pooling window of {list(layer.pool_size)}"
        elif layer.type == "conv":
            if min(layer.kernel.shape) < 1:
                problem = f"kernels of shape {list(layer.kernel.shape)}"
            elif layer.kernel.shape[2] != channels:
                problem = (f"kernels for {layer.kernel.shape[2]} input channels after a layer that gives "
                           f"{channels}")
            channels = layer.kernel.shape[3]
        if problem:
            raise UserError(f"{path} is not a usable VGG network: layer {layer.name} has {problem}. "
                            f"Expected imagenet-vgg-verydeep-19.mat: {HOW_TO_GET}")


def _feature_count(layers):
    """The layers before the first one the graph cannot run, cut after the last pooling layer."""
    end = next((i for i, layer in enumerate(layers) if layer.type not in SUPPORTED_TYPES), len(layers))
    pools = [i for i, layer in enumerate(layers[:end]) if layer.type == "pool"]
    return pools[-1] + 1 if pools else end


# ---------------------------------------------------------------------------------------------
# The cache of the feature layers

CACHE_FORMAT = 2  # 2: the contents' digest in the metadata


def _cache_folder(path):
    """`NAME.mat.cache/` beside the file, or a folder under ~/.cache where that is read-only."""
    beside = path.with_name(path.name + ".cache")
    if (beside.is_dir() and _writable(beside)) or (not beside.exists() and _writable(path.parent)):
        try:
            beside.mkdir(exist_ok=True)
            return beside
        except OSError:
            pass
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neural-style" / digest
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return home


def _writable(folder):
    """Writable, and not marked read-only: root may write anywhere, but a folder whose owner took
    away every write bit (a shared weights folder) is left alone."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _read_cache(path, key):
    folder = _cache_folder(path)
    if folder is None or not (folder / "features.npz").exists():
        return None
    try:
        with np.load(folder / "features.npz", allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta["key"] != key:
                return None
            arrays = {name: data[name] for name in data.files if name != "meta"}
            if meta["digest"] != _digest(meta["layers"], meta["feature_count"], arrays):
                raise ValueError("its contents do not match their digest")
        layers = tuple(Layer(kernel=arrays.get(f"kernel_{i}"), bias=arrays.get(f"bias_{i}"),
                             **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
                       for i, fields in enumerate(meta["layers"]))
        return Network(str(path), layers, arrays["mean"], meta["feature_count"], meta["sha256"])
    except Exception as error:  # truncated or damaged (zipfile, pickle, JSON, shapes): parse again
        _damaged_cache(folder / "features.npz", error)
        return None


def _damaged_cache(path, error):
    """A cache that cannot be read is rebuilt, with a note (it is never the user's to fix)."""
    print(f"note: the cache {path} is damaged ({type(error).__name__}); rebuilding it", file=sys.stderr)
    files.remove(path)


def _write_cache(network, key):
    """Best effort: a run goes on without a cache where none can be written."""
    folder = _cache_folder(Path(network.path))
    if folder is None:
        return
    arrays = {"mean": network.mean_pixel}
    fields = []
    for i, layer in enumerate(network.layers):
        fields.append({"name": layer.name, "type": layer.type, "pad": list(layer.pad),
                       "stride": list(layer.stride), "pool_size": list(layer.pool_size)})
        if layer.kernel is not None:
            arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = layer.kernel, layer.bias
    meta = {"key": key, "layers": fields, "feature_count": network.feature_count, "sha256": network.sha256,
            "digest": _digest(fields, network.feature_count, arrays)}
    _save_npz(folder / "features.npz", meta=np.array(json.dumps(meta)), **arrays)


def _digest(fields, feature_count, arrays):
    """SHA-256 of a cache's layers and arrays: a file that opens but was altered or half-replaced
    (a layer missing, a kernel of another shape, NaN weights) is rebuilt, not believed."""
    digest = hashlib.sha256(json.dumps([fields, feature_count], sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name} {array.dtype.str} {array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _save_npz(path, **arrays):
    """Write a cache file atomically; a cache that cannot be written is skipped, not an error."""
    def write(temporary):
        with open(temporary, "wb") as out:
            np.savez(out, **arrays)
    try:
        files.write_atomic(path, write)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Gatys et al.'s normalised network

def normalize(network, photos, photo_set, pooling="avg"):
    """The network rescaled so that every channel's mean post-ReLU activation over `photos` is 1.

    Gatys et al. used such a VGG19: with it the paper's alpha/beta ratios mean what they say. Each
    conv layer's kernels and bias are divided by its channels' mean activation m (ReLU commutes with
    a positive scale, as does either pooling), and the next conv layer's input weights are multiplied
    by m, so every layer computes what it did before, divided by its own m. Hence one forward pass of
    the original network gives every m. Channels that never fire (m = 0) are left as they are.
    The result is cached beside the .mat, keyed by the file's checksum, the photos and the pooling.
    """
    key = {"sha256": network.sha256, "photos": photo_set, "pooling": pooling, "format": CACHE_FORMAT}
    folder = _cache_folder(Path(network.path))
    cache = folder / f"normalized-{pooling}.npz" if folder else None
    scales = _read_scales(cache, key)
    if scales is None:
        scales = _channel_means(network, photos, pooling)
        _write_scales(cache, key, scales)
    layers, previous = list(network.layers), None
    for i, layer in enumerate(layers[:network.feature_count]):
        if layer.type != "conv":
            continue
        kernel, bias = layer.kernel, layer.bias
        if previous is not None:  # undo the previous layer's scale on this layer's input
            kernel = kernel * previous[np.newaxis, np.newaxis, :, np.newaxis]
        mean = scales.get(layer.name)
        if mean is not None:
            kernel, bias = kernel / mean, bias / mean
        previous = mean if mean is not None else np.ones(layer.kernel.shape[3], np.float32)
        layers[i] = replace(layer, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))
    description = f"mean activation 1 per channel on {photo_set}, {pooling} pooling"
    return replace(network, layers=tuple(layers), normalization=description)


def _channel_means(network, photos, pooling):
    """{conv name: mean of its ReLU's output per channel (1 where it is 0)} over all photos."""
    pairs = [(conv.name, after.name) for conv, after in zip(network.layers[:network.feature_count],
                                                            network.layers[1:network.feature_count])
             if conv.type == "conv" and after.type == "relu"]
    net = VGG(network, [relu for _, relu in pairs], pooling=pooling)
    sums, positions = {}, {}
    for photo in photos:
        for name, features in net(np.asarray(photo, np.float32)[np.newaxis]).items():
            sums[name] = sums.get(name, 0.0) + tf.reduce_sum(features, axis=[0, 1, 2]).numpy().astype(np.float64)
            positions[name] = positions.get(name, 0) + int(np.prod(features.shape[1:3]))
    means = {}
    for conv, relu in pairs:
        mean = sums[relu] / positions[relu]
        means[conv] = np.where(mean > 0, mean, 1.0).astype(np.float32)
    return means


def _read_scales(cache, key):
    if cache is None or not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as data:
            if json.loads(str(data["meta"])) != key:
                return None
            return {name: data[name] for name in data.files if name != "meta"}
    except Exception as error:
        _damaged_cache(cache, error)
        return None


def _write_scales(cache, key, scales):
    if cache is not None:
        _save_npz(cache, meta=np.array(json.dumps(key)), **scales)


# ---------------------------------------------------------------------------------------------
# The graph



def resolve_precision(precision):
    """The dtype the network computes in. `auto` takes a reduced precision where the hardware runs
    it fast: bfloat16 on a GPU of compute capability 8 or more (its range is float32's, so nothing
    overflows), float16 on older GPUs, bfloat16 on a CPU with native bfloat16 instructions, else
    float32. (float16 overflow is caught by L-BFGS's hand-over to float32, and by Adam's loss scaling.)"""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "bfloat16" if all(_compute_capability(gpu) >= (8, 0) for gpu in gpus) else "float16"
    return "bfloat16" if _cpu_has_bf16() else "float32"


def _compute_capability(gpu):
    """(major, minor) of a CUDA GPU; (0, 0) where TensorFlow does not say (then float16 is chosen)."""
    try:
        return tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
    except (ValueError, TypeError, AttributeError):
        return (0, 0)


def _cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class VGG:
    """The network's layers up to the deepest of `outputs`, as a function image -> {name: features}.

    Images are [batch, height, width, 3] float32 RGB in 0..255; the mean pixel is subtracted here.
    `pooling` replaces the file's max pooling by average pooling ("avg", as Gatys et al.) or keeps
    it ("max"). The network computes in `dtype` (float32, bfloat16, float16); features come back as
    float32 (`native` leaves them in `dtype`). With `recompute`, each block's activations are
    recomputed in the backward pass instead of being stored, which trades about a third more time
    for less memory at large sizes (per layer was measured too: at 4096 px it kept more, since the
    layers' inputs are the very maps a plain backward pass keeps).
    `weights`, {conv name: (kernel, bias)}, runs the graph on other tensors than the file's constants
    (the trainable copy of the two-stage generator).
    """

    def __init__(self, network, outputs, pooling="avg", dtype="float32", recompute=False, weights=None):
        if pooling not in POOLINGS:
            raise UserError(f"pooling must be 'avg' or 'max', not '{pooling}'")
        self.network = network
        self.outputs = tuple(dict.fromkeys(outputs))
        if not self.outputs:
            raise ValueError("VGG needs at least one output layer")
        deepest = max(network.index(name) for name in self.outputs)
        self.layers = network.layers[:deepest + 1]
        self.pooling = pooling
        self.dtype = tf.as_dtype(resolve_precision(dtype) if isinstance(dtype, str) else dtype)
        self.recompute = recompute
        self.min_size = max(network.min_size(name) for name in self.outputs)
        self._mean = tf.constant(network.mean_pixel, tf.float32)
        self._weights = weights or {
            layer.name: (tf.constant(layer.kernel, self.dtype), tf.constant(layer.bias, self.dtype))
            for layer in self.layers if layer.type == "conv"}
        self._blocks, block = [], []
        for layer in self.layers:  # blocks end at each pooling layer
            block.append(layer)
            if layer.type == "pool" or layer is self.layers[-1]:
                self._blocks.append(tuple(block))
                block = []

    def check_size(self, what, height, width, advice):
        """The one "image too small for the deepest layer" check: a UserError saying what to do."""
        if min(height, width) < self.min_size:
            raise UserError(f"the {what} is {width}x{height} px at the size it is used, but layer "
                            f"{self.layers[-1].name} needs at least {self.min_size} px on each side: "
                            f"{advice}")

    def __call__(self, images):
        return {name: tf.cast(features, tf.float32) for name, features in self.native(images).items()}

    def native(self, images):
        """{name: features} in the network's own dtype."""
        features = dict(self.each(images))
        return {name: features[name] for name in self.outputs}

    def each(self, images):
        """(name, features in the network's dtype) for each output as it is computed, so that a
        caller that reduces each at once holds one map at a time (at 4096 px they are gigabytes)."""
        x = tf.cast(images - self._mean, self.dtype)
        for block in self._blocks:
            names = [layer.name for layer in block if layer.name in self.outputs]
            run = lambda x, block=block, names=names: self._run_block(block, names, x)
            x, *outputs = (tf.recompute_grad(run) if self.recompute else run)(x)
            yield from zip(names, outputs)

    def _run_block(self, block, names, x):
        outputs = []
        for layer in block:
            x = self._apply(layer, x)
            if layer.name in names:
                outputs.append(x)
        return (x, *outputs)

    def _apply(self, layer, x):
        if layer.type == "conv":
            kernel, bias = self._weights[layer.name]
            return tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=layer.stride,
                                               padding=_conv_padding(layer)), bias)
        if layer.type == "relu":
            return tf.nn.relu(x)
        # Pooling keeps the last row and column of an odd-sized map (Caffe's ceil mode, as the
        # paper's Caffe network did); windows that cross the border average the pixels inside.
        pool = tf.nn.avg_pool2d if self.pooling == "avg" else tf.nn.max_pool2d
        return pool(x, ksize=layer.pool_size, strides=layer.stride, padding="SAME")


def _conv_padding(layer):
    top, bottom, left, right = layer.pad
    height, width = layer.kernel.shape[:2]
    if layer.stride == (1, 1) and (top + bottom, left + right) == (height - 1, width - 1) \
            and top == bottom and left == right:
        return "SAME"
    if layer.pad == (0, 0, 0, 0):
        return "VALID"
    return [[0, 0], [top, bottom], [left, right], [0, 0]]


# ---------------------------------------------------------------------------------------------
# Writing a network: random weights of a real layout, for tests and the benchmark

VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG_WIDTHS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (123.68, 116.779, 103.939)


def write_random(path, blocks=VGG19_BLOCKS, widths=VGG_WIDTHS, classifier=(4096, 1000),
                 layout="new", seed=0):
    """Write a MatConvNet VGG `.mat` with He-initialised random weights.

    `blocks` and `widths` give the convolutions per block and their channels: the defaults are the real
    VGG19 shapes (with `classifier` the fc layers of the published file, 548 MB); tests use a few
    channels. `layout` is "new" (meta.normalization, current URL) or "old" (normalization with a mean
    image, the beta16 file), each with its own field order.
    """
    rng = np.random.default_rng(seed)
    layers, channels = [], 3

    def conv(name, size, out, pad):
        nonlocal channels
        kernel = rng.standard_normal((size, size, channels, out), dtype=np.float32)
        kernel *= np.float32(np.sqrt(2.0 / (size * size * channels)))
        bias = (rng.standard_normal(out) * 0.01).astype(np.float32)
        weights = np.empty((1, 2), dtype=object)
        weights[0, 0] = kernel
        weights[0, 1] = bias.reshape(1, out) if layout == "new" else bias.reshape(out, 1)
        pad = np.full((1, 4), float(pad))
        stride = np.array([[1.0, 1.0]])
        if layout == "new":
            layers.append({"name": name, "type": "conv", "weights": weights, "size": np.array(
                [[size, size, channels, out]], float), "pad": pad, "stride": stride, "precious": 0,
                "dilate": 1.0, "opts": np.empty((0, 0), dtype=object)})
        else:
            layers.append({"weights": weights, "pad": pad, "type": "conv", "name": name, "stride": stride})
        channels = out

    def simple(name, kind, **fields):
        layers.append({"name": name, "type": kind, **fields} if layout == "new"
                      else {"type": kind, "name": name, **fields})

    for block, (count, width) in enumerate(zip(blocks, widths), start=1):
        for i in range(1, count + 1):
            conv(f"conv{block}_{i}", 3, width, 1)
            simple(f"relu{block}_{i}", "relu")
        simple(f"pool{block}", "pool", method="max", pool=np.array([[2.0, 2.0]]),
               stride=np.array([[2.0, 2.0]]), pad=np.zeros((1, 4)))
    if classifier:
        hidden, classes = classifier
        conv("fc6", 7, hidden, 0)
        simple("relu6", "relu")
        conv("fc7", 1, hidden, 0)
        simple("relu7", "relu")
        conv("fc8", 1, classes, 0)
        simple("prob", "softmax")
    cells = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cells[0, i] = layer
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)
    if layout == "new":
        top = {"layers": cells, "meta": {"inputs": {"name": "data", "size": [224.0, 224.0, 3.0, 10.0]},
                                         "normalization": {"averageImage": mean.reshape(1, 1, 3)}}}
    else:
        image = np.broadcast_to(mean, (8, 8, 3)) + rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32)
        image -= image.mean(axis=(0, 1)) - mean  # the spatial mean is exactly the mean pixel
        top = {"layers": cells, "normalization": {"averageImage": image.astype(np.float32)}}
    import scipy.io
    scipy.io.savemat(str(path), top, do_compression=False)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Fetching the published file

def ensure_default(progress=True):
    """The default network file, downloaded on first use (as Keras does with its weights)."""
    if not DEFAULT_PATH.exists():
        print(f"{DEFAULT_PATH.name} is not in weights/ yet: downloading it once from {URL}",
              file=sys.stderr)
        fetch(DEFAULT_PATH, URL, SHA256, progress=progress)
    return DEFAULT_PATH


def fetch(dest, url, sha256, progress=True):
    """Download a network file (resumable, checksum-verified); see download.py."""
    return download.fetch(url, dest, sha256, progress=progress,
                          manual_hint=f"download {url} by hand (SHA256 {sha256}) and save it as {dest}")


def main(argv=None):
    parser = cli.ArgumentParser(prog="vgg.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch the VGG19 .mat file (resumes, verifies SHA256)")
    get.add_argument("--dest", type=Path, default=DEFAULT_PATH, help=f"where to save it ({DEFAULT_PATH})")
    get.add_argument("--url", default=URL, help="where to fetch it from")
    get.add_argument("--sha256", default=SHA256, help="the checksum it must have")
    info = commands.add_parser("layers", help="list the layers of a .mat file and its mean pixel")
    info.add_argument("network", type=Path, nargs="?", default=DEFAULT_PATH)
    return cli.entry(lambda: _run(parser.parse_args(argv)))


def _run(args):
    if args.command == "download":
        if args.dest.exists():
            print(f"{args.dest} already exists; delete it to download again.", file=sys.stderr)
            return 0
        fetch(args.dest, args.url, args.sha256)
        print(f"saved {args.dest}")
    else:
        network = load(args.network)
        print(f"{network.path}: mean pixel {np.round(network.mean_pixel, 3).tolist()}")
        for layer in network.layers:
            shape = "" if layer.kernel is None else f" {list(layer.kernel.shape)}"
            print(f"  {layer.name:10s} {layer.type}{shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
