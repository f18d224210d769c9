"""Image files in and out, and the colour transforms of Gatys et al. (2017).

Images are float32 numpy arrays [height, width, 3], RGB in 0..255. Reading accepts what users have
(grayscale, RGBA, palette, CMYK, 16-bit) and turns it into that; writing is atomic, so an existing
result is never half-overwritten and a crash never leaves a truncated file under the final name.
"""
import stat
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

import files
from errors import UserError
from quiet_tf import tf

# What the readers take (a folder's images are the files with these), and the formats written.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
WRITABLE = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def load_image(path, what="image"):
    """Read any common image file as float32 RGB 0..255, upright as its EXIF orientation says (a
    phone's portrait photo); a UserError names the file otherwise. A pipe (/dev/stdin, a FIFO) is
    read whole first."""
    path = Path(path)
    source = _source(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large but legitimate
            mode = iio.immeta(source, index=0, plugin="pillow").get("mode")
            if mode in _HIGH_DEPTH_MODES:  # 16-bit or float grayscale: scale to 0..255 ourselves
                image = _array_to_rgb(iio.imread(source, index=0, plugin="pillow", rotate=True))
            else:  # Pillow converts palette, grayscale, CMYK, 1-bit and 16-bit RGB to RGBA for us
                image = _over_white(iio.imread(source, index=0, mode="RGBA", plugin="pillow", rotate=True))
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"{what} {path} cannot be read: permission denied") from None
    except MemoryError:
        raise UserError(f"{what} {path} is too large to decode in the memory available; scale it down "
                        f"first") from None
    except Exception as error:
        if _caused_by(error, Image.DecompressionBombError):  # imageio wraps Pillow's error
            raise UserError(f"{what} {path} has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} million "
                            f"pixels, more than this program decodes (a guard against decompression "
                            f"bombs); scale it down first") from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "truncated" in reason.lower():
            raise UserError(f"{what} {path} is truncated or corrupt ({reason})") from None
        raise UserError(f"{what} {path} is not an image this program can read ({reason}); "
                        f"use PNG, JPEG, BMP, GIF, TIFF or WebP") from None
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise UserError(f"{what} {path} is empty ({image.shape[1]}x{image.shape[0]} px)")
    return image


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


def _caused_by(error, kind):
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def _source(path, what):
    """What the reader takes: the path of a regular file, or the bytes of a pipe or device."""
    try:
        kind = path.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read ({error.strerror})") from None
    if stat.S_ISREG(kind):
        return path
    if stat.S_ISDIR(kind):
        raise UserError(f"{what} {path} is a folder; give an image file")
    try:  # a FIFO, /dev/stdin, a process substitution: read it once, whole
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise UserError(f"{what} {path} is not a regular file and cannot be read ({error.strerror}); "
                        f"save the image to a file and give its path") from None
    if not data:
        raise UserError(f"{what} {path} is a pipe that delivered nothing; give an image file")
    return data


def _over_white(rgba):
    """Composite transparent pixels over white, as an image viewer shows them."""
    rgba = rgba.astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    return rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)


def _array_to_rgb(raw):
    """An integer or float (0..1) array, grayscale or colour, as float32 RGB 0..255."""
    raw = np.asarray(raw)
    if np.issubdtype(raw.dtype, np.integer):
        image = raw.astype(np.float32) * (255.0 / np.iinfo(raw.dtype).max)
    else:
        image = np.clip(raw.astype(np.float32), 0.0, 1.0) * 255.0
    if image.ndim == 2:
        image = image[..., np.newaxis]
    if image.shape[2] in (1, 2):
        image = np.repeat(image[..., :1], 3, axis=2)
    return image[..., :3]


# The most ImageNet-like photos in scikit-image's wheel: objects, an animal, a person, a scene (its
# brick, grass and gravel textures are left out: ImageNet has few pictures of texture alone).
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def sample_photos(long_side=256):
    """Natural photos that scikit-image ships inside its wheel (no download needed): the set the
    network is normalised on. Returns the photos and a description of the set."""
    try:
        import skimage
        import skimage.data
    except ImportError:
        raise UserError("normalising the network needs scikit-image's sample photos: "
                        "pip install scikit-image") from None
    arrays = [getattr(skimage.data, name)() for name in SAMPLE_PHOTOS]
    arrays.append(skimage.data.stereo_motorcycle()[0])
    photos = [fit_long_side(_array_to_rgb(array), long_side) for array in arrays]
    names = ", ".join(SAMPLE_PHOTOS + ("motorcycle_left",))
    return photos, f"scikit-image {skimage.__version__} sample photos ({names}) at {long_side} px"


def check_writable(path, overwrite, what="output"):
    """Fail before a long run, not after it, when the result could not or must not be written."""
    path = Path(path)
    if path.suffix.lower() not in WRITABLE:
        raise UserError(f"{what} {path} has an unsupported extension '{path.suffix}'; use one of "
                        f"{', '.join(WRITABLE)}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name such as {path / 'result.png'}")
    files.check_new(path, overwrite, what)
    files.check_folder(path, what)


def save_image(path, image, overwrite=True):
    """Write atomically (files.write_atomic). Without `overwrite`, an existing file is kept and the
    image goes to the next free name `stem.1.png`, … instead; returns the path."""
    path = Path(path)
    return files.write_atomic(path, _writer(path, image), keep_existing=not overwrite)


def save_result(path, image, overwrite=True, what="result"):
    """save_image for a finished result: a failing write (disk full, a folder that went away) puts
    it at a fallback path instead (files.write_result). Returns (path written, failure or None)."""
    path = Path(path)
    return files.write_result(path, _writer(path, image), what, keep_existing=not overwrite)


def _writer(path, image):
    """Encoded in memory, then written as bytes: imageio writing to a full disk raised once more from
    its writer's finaliser, a traceback on stderr beside our one-line warning."""
    pixels = np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
    extension = Path(path).suffix.lower()

    def write(temporary):
        encoded = iio.imwrite("<bytes>", pixels, extension=extension)
        with open(temporary, "wb") as out:
            out.write(encoded)
    return write


def resize(image, height, width):
    """Resize with an antialiasing filter (so downscaled photos and paintings do not alias)."""
    height, width = max(int(height), 1), max(int(width), 1)
    if image.shape[:2] == (height, width):
        return np.asarray(image, dtype=np.float32)
    resized = tf.image.resize(np.asarray(image, np.float32), (height, width), method="bicubic",
                              antialias=True)
    return np.clip(resized.numpy(), 0.0, 255.0)


def resize_nearest(image, height, width):
    """Nearest-neighbour resize by PIL (what scipy.misc.imresize and Keras' load_img did by default)."""
    from PIL import Image
    size = (int(width), int(height))
    channels = [Image.fromarray(np.ascontiguousarray(channel)).resize(size, Image.Resampling.NEAREST)
                for channel in np.moveaxis(np.asarray(image, np.float32), -1, 0)]
    return np.stack([np.asarray(channel, np.float32) for channel in channels], axis=-1)


KERAS_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)  # Caffe's ImageNet mean, B, G, R


def keras_preprocess(image):
    """Keras' preprocess_input for VGG ("caffe" mode): RGB to BGR, then the BGR mean subtracted."""
    return np.asarray(image, np.float32)[..., ::-1] - KERAS_BGR_MEAN


def resize_mask(mask, height, width):
    """A [height, width] mask resized with antialiasing, values kept in 0..1."""
    resized = tf.image.resize(np.asarray(mask, np.float32)[..., np.newaxis], (int(height), int(width)),
                              method="bilinear", antialias=True)
    return np.clip(resized.numpy()[..., 0], 0.0, 1.0)


def load_mask(path):
    """A grayscale mask from any image file: white 1, black 0."""
    return np.clip(rgb_to_yiq(load_image(path, "style mask"))[..., 0] / 255.0, 0.0, 1.0)


def fit_long_side(image, long_side):
    """Scale so that the longer side is `long_side` pixels, keeping the aspect ratio."""
    return resize(image, *fitted_size(image.shape, long_side))


def fitted_size(shape, long_side):
    """(height, width) of an image of `shape` scaled so that its longer side is `long_side`."""
    height, width = shape[:2]
    scale = long_side / max(height, width)
    return round(height * scale), round(width * scale)


def cap_long_side(image, max_size):
    """Shrink to `max_size` on the longer side if it is larger; never enlarge."""
    return resize(image, *capped_size(image.shape, max_size))


def capped_size(shape, max_size):
    """(height, width) of an image of `shape` after cap_long_side."""
    return fitted_size(shape, min(max(shape[:2]), max_size))


# YIQ, the colour space Gatys et al. (2017) use for luminance-only transfer.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]], dtype=np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def rgb_to_yiq(image):
    return np.asarray(image, np.float32) @ _RGB_TO_YIQ.T


def yiq_to_rgb(image):
    return np.asarray(image, np.float32) @ _YIQ_TO_RGB.T


def luminance(image):
    """The Y channel, repeated into three so that VGG can take it."""
    y = rgb_to_yiq(image)[..., :1]
    return np.repeat(y, 3, axis=2)


def match_luminance(style, content):
    """Style luminance with the content luminance's mean and standard deviation (Gatys et al. 2017,
    section 5.1), so the transfer does not shift the content's brightness and contrast."""
    style_y, content_y = luminance(style), luminance(content)
    scaled = (style_y - style_y.mean()) / max(float(style_y.std()), 1e-6)
    return scaled * float(content_y.std()) + float(content_y.mean())


def with_colors_of(luminance_image, content):
    """Combine the luminance of a result with the I and Q (colour) channels of the content."""
    yiq = rgb_to_yiq(content)
    yiq[..., 0] = rgb_to_yiq(luminance_image)[..., 0]
    return np.clip(yiq_to_rgb(yiq), 0.0, 255.0)


def match_colors(style, content):
    """The style's colours moved to the content's mean and covariance (Gatys et al. 2017, section
    5.2: colour histogram matching with a linear transform, x -> A (x - mu_s) + mu_c, A the
    symmetric square-root map from the style's covariance to the content's)."""
    pixels_s = np.asarray(style, np.float64).reshape(-1, 3)
    pixels_c = np.asarray(content, np.float64).reshape(-1, 3)
    mean_s, mean_c = pixels_s.mean(axis=0), pixels_c.mean(axis=0)
    eye = 1e-3 * np.eye(3)  # keeps a flat (grayscale) image's covariance invertible
    root_s, root_c = _sqrtm(np.cov(pixels_s.T) + eye), _sqrtm(np.cov(pixels_c.T) + eye)
    transform = root_c @ np.linalg.inv(root_s)
    matched = (pixels_s - mean_s) @ transform.T + mean_c
    return np.clip(matched, 0.0, 255.0).reshape(np.shape(style)).astype(np.float32)


def _sqrtm(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return vectors @ np.diag(np.sqrt(np.maximum(values, 0.0))) @ vectors.T
