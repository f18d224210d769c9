"""Bad inputs and faults, program by program: each ends with the exit status and the one line the
docs promise, and leaves the files it should (a finished result is never lost).

Each row of a table is (arguments or injected fault, exit status, text the stderr must contain,
files that must exist, files that must not). Paths in a row are written with placeholders that
`expand` fills in: {content}, {style}, {net}, {tmp} (the test's folder). Rows run in-process on
tiny networks and images; only the signal rows start a process of their own.
"""
import builtins
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import fast_style
import fast_apply
import fast_train
import figures
import files
import images
import neural_style
import vgg
from conftest import smooth_image, stripes_image, write_tiny

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    argv: list
    status: int
    message: str
    exist: list = field(default_factory=list)
    absent: list = field(default_factory=list)
    fault: object = None  # fault(monkeypatch, places) injects a failure before the run

    def __str__(self):
        fault = f"[{self.fault.__name__}] " if self.fault else ""
        return (fault + " ".join(map(str, self.argv)))[:70]


def expand(items, places):
    return [str(item).format(**places) for item in items]


def check(row, main, places, monkeypatch, capsys):
    if row.fault:
        row.fault(monkeypatch, places)
    status = main(expand(row.argv, places))
    err = capsys.readouterr().err
    assert status == row.status, err
    assert row.message in err, err
    assert "Traceback" not in err
    for path in expand(row.exist, places):
        assert list(Path(places["tmp"]).glob(os.path.relpath(path, places["tmp"]))), f"{path} missing: {err}"
    for path in expand(row.absent, places):
        assert not list(Path(places["tmp"]).glob(os.path.relpath(path, places["tmp"]))), f"{path} exists"
    return err


@pytest.fixture
def places(tmp_path, tiny_mat):
    content = images.save_image(tmp_path / "content.png", smooth_image(40, 48))
    style = images.save_image(tmp_path / "style.png", stripes_image(44, 44))
    return {"content": content, "style": style, "net": tiny_mat, "tmp": tmp_path}


# ---------------------------------------------------------------------------------------------
# Injected faults

def full_disk_at_output(monkeypatch, places):
    """The final rename into place fails as on a full disk; other writes work."""
    def failing(real):
        def call(source, target):
            if Path(target).name == "out.png":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(source, target)
        return call
    monkeypatch.setattr(files.os, "replace", failing(os.replace))
    monkeypatch.setattr(files.os, "link", failing(os.link))


def full_disk_for_the_record(monkeypatch, places):
    """The image is written; the disk fills up before its run record."""
    def full(path, value):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(files, "write_json", full)


def full_disk_in_folder(monkeypatch, places):
    """Nothing at all can be written in the test's folder: the fallback goes to the temporary folder."""
    real = files._temporary_beside
    monkeypatch.setattr(files.tempfile, "gettempdir", lambda: str(places["tmp"] / "system-tmp"))
    (places["tmp"] / "system-tmp").mkdir()

    def beside(path, folder=False):
        if Path(path).parent == places["tmp"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, folder)
    monkeypatch.setattr(files, "_temporary_beside", beside)


def a_photo_named_like_a_loss_plot(monkeypatch, places):
    shutil.copy(places["content"], places["tmp"] / "a.losses.png")


def a_photo_named_like_a_snapshot(monkeypatch, places):
    shutil.copy(places["content"], places["tmp"] / "a_00001.png")


def a_locked_folder(monkeypatch, places):
    """A folder this user cannot write in (the tests may run as root, whom permissions do not stop)."""
    (places["tmp"] / "locked").mkdir()
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path).name != "locked" and real(path, mode))


def an_earlier_record(monkeypatch, places):
    (places["tmp"] / "out.json").write_text('{"mine": 1}\n')


def unopenable_progress_file(monkeypatch, places):
    """The progress file's folder passes the check at the start, then the file cannot be opened."""
    def refuse(path, *args, **kwargs):
        if Path(path).name == "progress.jsonl":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)
    monkeypatch.setattr(neural_style, "open", refuse, raising=False)


def interrupt_at_load(monkeypatch, places):
    def load(path):
        raise KeyboardInterrupt
    monkeypatch.setattr(vgg, "load", load)


NEURAL_STYLE = [
    Row(["--style-weight", "nan"], 1, "--style-weight must be a finite number", absent=["{tmp}/out.png"]),
    Row(["--content-weight", "inf"], 1, "--content-weight must be a finite number"),
    Row(["--style-weight", "-100"], 1, "--style-weight must be 0 or a positive number"),
    Row(["--tv-weight", "-1"], 1, "--tv-weight must be 0 or a positive number"),
    Row(["--learning-rate", "0"], 1, "--learning-rate must be positive"),
    Row(["--learning-rate", "nan"], 1, "--learning-rate must be a finite number"),
    Row(["--style-blend-weights", "-1"], 1, "--style-blend-weights must be 0 or a positive number"),
    Row(["--style-scale", "-2"], 1, "--style-scale must be positive"),
    Row(["--style-scale", "1000"], 1, "lower --style-scale"),
    Row(["--noise-ratio", "nan"], 1, "noise ratio must be between 0 and 1"),
    Row(["--seed", "-1"], 1, "--seed must be a whole number from 0"),
    Row(["--iterations", "1.5"], 1, "'1.5' is not a whole number"),
    Row(["--style-layers", "relu1_1,relu2_1,relu1_1"], 1, "names relu1_1 twice"),
    Row(["--style-layers", "relu1_1:nan"], 1, "the weight of relu1_1 must be a finite number"),
    Row(["--content-layers", "relu4_2:-1"], 1, "the weight of relu4_2 must be a finite number"),
    Row(["--style", "{style}", "{style}", "--style-blend-weights", "1", "0", "--style-layers", "relu1_1",
         "--style-layer-sets", ",", "relu1_1"], 1, "the style objective is empty"),
    Row(["--style-weight", "1e39"], 1, "the loss is not finite at the starting image",
        absent=["{tmp}/out.png", "{tmp}/out.*.png"]),
    Row(["--output", "{content}", "--overwrite"], 1, "is one of the inputs", exist=["{content}"]),
    Row(["--progress-file", "{net}", "--overwrite"], 1, "is one of the inputs", exist=["{net}"]),
    Row(["--progress-file", "{tmp}/out.png"], 1, "is where the image goes", absent=["{tmp}/out.png"]),
    Row(["--progress-file", "{tmp}/out.json"], 1, "is where the run's record goes", absent=["{tmp}/out.png"]),
    Row([], 1, "out.json already exists; pass --overwrite", fault=an_earlier_record, absent=["{tmp}/out.png"]),
    Row(["--content", "{tmp}/a.losses.png", "--output", "{tmp}/a.png", "--progress-plot", "--overwrite"], 1,
        "is one of the inputs", fault=a_photo_named_like_a_loss_plot, absent=["{tmp}/a.png"]),
    Row(["--content", "{tmp}/a_00001.png", "--output", "{tmp}/a.png", "--snapshot-every", "1", "--overwrite"], 1,
        "is one of the inputs", fault=a_photo_named_like_a_snapshot, absent=["{tmp}/a.png"]),
    Row(["--output", "{tmp}/locked/out.png"], 1, "is not writable; choose a folder you can write to",
        fault=a_locked_folder),
    Row(["--scales", "0.5,,1"], 1, "has an empty entry"),
    Row(["--scales", "0.5,1,1"], 1, "scales must rise to 1"),
    Row(["--scales", "1.0000001"], 1, "got 1.0000001"),
    Row(["--output", "{content}/out.png"], 1, "is a file, not a folder"),
    Row(["--progress-file", "{tmp}/missing/progress.jsonl"], 1, "progress file folder",
        absent=["{tmp}/out.png"]),
    Row(["--progress-file", "{tmp}/progress.jsonl"], 0, "the run goes on without it", fault=unopenable_progress_file,
        exist=["{tmp}/out.png", "{tmp}/out.json"], absent=["{tmp}/progress.jsonl"]),
    Row(["--progress-file", "{tmp}"], 1, "is a folder"),
    Row([], 1, "it is saved as", fault=full_disk_at_output,
        exist=[f"{{tmp}}/out.unsaved-{os.getpid()}.png", f"{{tmp}}/out.unsaved-{os.getpid()}.json"],
        absent=["{tmp}/out.png", "{tmp}/.out.png.*"]),
    Row([], 1, "system-tmp", fault=full_disk_in_folder,
        exist=[f"{{tmp}}/system-tmp/out.unsaved-{os.getpid()}.png", f"{{tmp}}/system-tmp/out.unsaved-{os.getpid()}.json"],
        absent=["{tmp}/out.png"]),
    Row([], 1, "could not be written (No space left on device)",
        fault=full_disk_for_the_record, exist=["{tmp}/out.png"], absent=["{tmp}/out.json"]),
    Row([], 130, "interrupted", fault=interrupt_at_load, absent=["{tmp}/out.png"]),
]


@pytest.mark.parametrize("row", NEURAL_STYLE, ids=str)
def test_neural_style(row, places, monkeypatch, capsys):
    base = ["--content", "{content}", "--style", "{style}", "--network", "{net}", "--iterations", "2",
            "--output", "{tmp}/out.png"]
    # A later --style or --output replaces the base one (argparse keeps the last).
    check(Row(base + row.argv, row.status, row.message, row.exist, row.absent, row.fault),
          neural_style.main, places, monkeypatch, capsys)


def test_a_nan_loss_at_the_start_is_an_error_not_a_saved_image(tiny_network):
    from presets import settings_for_preset
    from stylize import stylize
    result = stylize(tiny_network, smooth_image(32, 32), [stripes_image(32, 32)],
                     settings_for_preset("writeup", iterations=2, style_weight=3e38, content_weight=3e38))
    assert result.image is None and result.status == "diverged"


# ---------------------------------------------------------------------------------------------
# Images: orientation, pipes, bombs

def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    image = images.load_image(tmp_path / "phone.jpg")
    assert image.shape == (40, 20, 3)  # upright: portrait
    assert image[:20].mean() > 200 and image[20:].mean() < 50  # the white half is now on top


def test_a_pipe_is_read(tmp_path):
    fifo = tmp_path / "photo.fifo"
    os.mkfifo(fifo)
    data = (tmp_path / "x.png")
    images.save_image(data, smooth_image(12, 16))

    def feed():
        with open(fifo, "wb") as out:
            out.write(data.read_bytes())
    threading.Thread(target=feed, daemon=True).start()
    assert images.load_image(fifo).shape == (12, 16, 3)


def test_a_decompression_bomb_is_our_own_one_line(tmp_path, monkeypatch):
    images.save_image(tmp_path / "big.png", smooth_image(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x40 is then over twice the limit
    with pytest.raises(images.UserError, match="million pixels, more than this program decodes"):
        images.load_image(tmp_path / "big.png")


def test_results_and_caches_are_readable_by_group_and_others(tmp_path):
    old = os.umask(0o022)
    try:
        path = images.save_image(tmp_path / "r.png", smooth_image(8, 8))
        mat = write_tiny(tmp_path / "net.mat")
        vgg.load(mat)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    cache = tmp_path / "net.mat.cache" / "features.npz"
    assert cache.stat().st_mode & 0o777 == 0o644


def test_an_existing_file_is_never_replaced_without_overwrite(tmp_path):
    (tmp_path / "r.png").write_bytes(b"precious")
    assert images.save_image(tmp_path / "r.png", smooth_image(8, 8), overwrite=False) == tmp_path / "r.1.png"
    assert (tmp_path / "r.png").read_bytes() == b"precious"


# ---------------------------------------------------------------------------------------------
# vgg.py: caches, inconsistent .mat files, download interrupted

def damaged_features_cache(monkeypatch, places):
    mat = write_tiny(places["tmp"] / "net.mat")
    vgg.load(mat)
    cache = places["tmp"] / "net.mat.cache" / "features.npz"
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated


def altered_features_cache(change):
    """A cache that still opens, its contents changed behind the metadata's back."""
    def fault(monkeypatch, places):
        mat = write_tiny(places["tmp"] / "net.mat")
        vgg.load(mat)
        cache = places["tmp"] / "net.mat.cache" / "features.npz"
        with np.load(cache) as data:
            arrays = {name: data[name] for name in data.files}
        change(arrays)
        np.savez(cache, **arrays)
    fault.__name__ = f"altered_features_cache_{change.__name__}"
    return fault


def without_a_kernel(arrays):
    del arrays["kernel_5"]


def a_kernel_reshaped(arrays):
    arrays["kernel_5"] = arrays["kernel_5"][..., :1]


def nan_weights(arrays):
    arrays["kernel_0"] = np.full_like(arrays["kernel_0"], np.nan)


def a_layer_missing_from_the_metadata(arrays):
    meta = json.loads(str(arrays["meta"]))
    meta["layers"] = meta["layers"][:-3]
    arrays["meta"] = np.array(json.dumps(meta))


def mismatched_channels(monkeypatch, places):
    mat = write_tiny(places["tmp"] / "net.mat")
    data = scipy.io.loadmat(str(mat))
    cells = data["layers"]
    for i in range(cells.shape[1]):
        layer = cells[0, i][0, 0]
        if str(layer["name"][0]) == "conv2_1":
            kernel = layer["weights"][0, 0]
            layer["weights"][0, 0] = np.zeros(kernel.shape[:2] + (7, kernel.shape[3]), np.float32)
    scipy.io.savemat(str(mat), {"layers": cells, "meta": data["meta"]})


def interrupted_download(monkeypatch, places):
    def download(url, part, progress):
        part.write_bytes(b"x" * 2048)
        raise KeyboardInterrupt
    monkeypatch.setattr(vgg.download, "_download", download)


VGG = [
    Row(["layers", "{tmp}/net.mat"], 0, "is damaged", fault=damaged_features_cache,
        exist=["{tmp}/net.mat.cache/features.npz"]),
    *[Row(["layers", "{tmp}/net.mat"], 0, "is damaged", fault=altered_features_cache(change),
          exist=["{tmp}/net.mat.cache/features.npz"])
      for change in (without_a_kernel, a_kernel_reshaped, nan_weights, a_layer_missing_from_the_metadata)],
    Row(["layers", "{tmp}/net.mat"], 1, "layer conv2_1 has kernels for 7 input channels",
        fault=mismatched_channels),
    Row(["layers", "{tmp}"], 1, "is a folder"),
    Row(["download", "--dest", "{tmp}/w.mat", "--url", "http://127.0.0.1:9/none"], 130,
        "received so far are kept", fault=interrupted_download, exist=["{tmp}/w.mat.part"],
        absent=["{tmp}/w.mat"]),
]


@pytest.mark.parametrize("row", VGG, ids=str)
def test_vgg(row, places, monkeypatch, capsys):
    check(row, vgg.main, places, monkeypatch, capsys)


def test_a_damaged_normalisation_cache_is_rebuilt(tmp_path, capsys):
    network = vgg.load(write_tiny(tmp_path / "net.mat"))
    photos = [smooth_image(32, 32)]
    first = vgg.normalize(network, photos, "one photo")
    cache = tmp_path / "net.mat.cache" / "normalized-avg.npz"
    cache.write_bytes(b"PK\x03\x04 not a zip")
    again = vgg.normalize(network, photos, "one photo")
    assert "is damaged" in capsys.readouterr().err
    np.testing.assert_allclose(again.layers[0].kernel, first.layers[0].kernel)
    with np.load(cache) as data:  # rewritten whole
        assert "meta" in data.files


# ---------------------------------------------------------------------------------------------
# figures.py

def diverging_tiles(monkeypatch, places):
    import stylize as module
    monkeypatch.setattr(module, "stylize", lambda *a, **k: module.Result(None, 0, "diverged"))


FIGURES = [
    Row(["figure3", "--style", "{style}", "--ratios", "1e-3,abc", "--out", "{tmp}/fig"], 1,
        "--ratios: 'abc' is not a positive number", absent=["{tmp}/fig"]),
    Row(["figure3", "--style", "{style}", "--ratios", "1e-3,-1", "--out", "{tmp}/fig"], 1,
        "'-1' is not a positive number"),
    Row(["figure2", "--style", "{style}", "--out", "{content}"], 1, "is a file; give a folder"),
    Row(["figure2", "--style", "{style}", "--ratio", "nan", "--out", "{tmp}/fig"], 1,
        "--ratio must be a finite number"),
    Row(["figure2", "--style", "{style}", "--out", "{tmp}/fig"], 1, "stopped being finite, so it is not kept",
        fault=diverging_tiles, absent=["{tmp}/fig/tiles/*.png", "{tmp}/fig/figure2.png"]),
]


@pytest.mark.parametrize("row", FIGURES, ids=str)
def test_figures(row, places, monkeypatch, capsys):
    argv = row.argv[:1] + ["--content", "{content}", "--network", "{net}", "--iterations", "2",
                           "--max-size", "32"] + row.argv[1:]
    check(Row(argv, row.status, row.message, row.exist, row.absent, row.fault), figures.main, places,
          monkeypatch, capsys)


def test_figure_tiles_are_keyed_by_content_not_by_path(places, monkeypatch):
    tmp = places["tmp"]
    for folder, image in (("a", stripes_image(44, 44)), ("b", stripes_image(44, 44, period=3))):
        (tmp / folder).mkdir()
        images.save_image(tmp / folder / "painting.png", image)
    base = ["figure2", "--content", str(places["content"]), "--network", str(places["net"]),
            "--iterations", "1", "--max-size", "32", "--out", str(tmp / "fig")]
    assert figures.main(base + ["--style", str(tmp / "a" / "painting.png")]) == 0
    assert figures.main(base + ["--style", str(tmp / "b" / "painting.png")]) == 0
    assert len(list((tmp / "fig" / "tiles").glob("painting_*.json"))) == 2  # not one reused tile
    images.save_image(places["content"], smooth_image(40, 48, seed=5))  # the photo replaced in place
    assert figures.main(base + ["--style", str(tmp / "b" / "painting.png")]) == 0
    assert len(list((tmp / "fig" / "tiles").glob("painting_*.json"))) == 3
    (tmp / "fig" / "tiles" / ".x.png.123.part.png").write_bytes(b"half")  # a write cut short
    assert figures.main(base + ["--style", str(tmp / "b" / "painting.png")]) == 0
    assert not list((tmp / "fig" / "tiles").glob(".*"))


# ---------------------------------------------------------------------------------------------
# fast_style.py

@pytest.fixture
def fast_places(places, trained):
    """A copy of conftest's model folder (4 steps, checkpoints 2 and 4, exported) to damage."""
    copy = places["tmp"] / "model"
    shutil.copytree(trained, copy)
    return {**places, "model": copy}


def damaged_training_json(monkeypatch, places):
    (places["model"] / "training.json").write_text('{"style": "x", ')


def damaged_saved_model(monkeypatch, places):
    (places["model"] / "saved_model" / "saved_model.pb").write_bytes(b"\x00garbage")


def damaged_saved_model_and_no_checkpoints(monkeypatch, places):
    damaged_saved_model(monkeypatch, places)
    shutil.rmtree(places["model"] / "checkpoints")


def damaged_latest_checkpoint(monkeypatch, places):
    for data in (places["model"] / "checkpoints").glob("ckpt-4.data-*"):
        data.write_bytes(data.read_bytes()[:10])


def damaged_every_checkpoint(monkeypatch, places):
    for data in (places["model"] / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(b"")


def colliding_folder(monkeypatch, places):
    folder = places["tmp"] / "photos"
    folder.mkdir()
    images.save_image(folder / "photo.png", smooth_image(32, 32, seed=1))
    Image.fromarray(smooth_image(32, 32, seed=2).astype(np.uint8)).save(folder / "photo.gif")


def truncated_video(monkeypatch, places):
    import imageio_ffmpeg
    path = places["tmp"] / "clip.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (32, 32), fps=10, macro_block_size=1,
                                         output_params=["-loglevel", "error"])
    writer.send(None)
    for i in range(40):
        writer.send(np.ascontiguousarray(smooth_image(32, 32, seed=i).astype(np.uint8)))
    writer.close()
    # As a cut-off download: the header (moov atom, at the end by default) survives, the frames not.
    data = path.read_bytes()
    moov = data.rfind(b"moov") - 4
    path.write_bytes(data[:moov // 3] + b"\x00" * (moov - moov // 3) + data[moov:])


def video_rename_fails(monkeypatch, places):
    truncated_video(monkeypatch, places)
    real = os.replace

    def replace(source, target):
        if Path(target).name == "out.mp4":
            raise OSError(errno.EACCES, "Permission denied")
        return real(source, target)
    monkeypatch.setattr(fast_apply.os, "replace", replace)


def stylize_row(*argv, **kwargs):
    return Row(["stylize", "--model", "{model}", *argv], **kwargs)


FAST_STYLE = [
    Row(["train", "--model", "{tmp}/m", "--style", "{style}", "--data", "{tmp}", "--learning-rate", "nan"],
        status=1, message="--learning-rate must be a finite number", absent=["{tmp}/m"]),
    Row(["train", "--model", "{tmp}/m", "--style", "{style}", "--data", "{tmp}", "--seed", "-1"],
        status=1, message="--seed must be a whole number"),
    Row(["train", "--model", "{tmp}/m", "--style", "{style}", "--data", "{tmp}", "--tv-weight", "-1"],
        status=1, message="--tv-weight must be 0 or a positive number"),
    Row(["train", "--model", "{tmp}/m", "--style", "{style}", "--data", "{tmp}", "--devices", "xyz"],
        status=1, message="'xyz' is not a device name such as gpu:0", absent=["{tmp}/m"]),
    Row(["train", "--model", "{tmp}/m", "--style", "{style}", "--data", "{tmp}", "--devices", "cpu:0,/CPU:0"],
        status=1, message="--devices must be devices named once each", absent=["{tmp}/m"]),
    Row(["train", "--model", "{tmp}/m", "--style", "{style}", "--data", "{tmp}", "--devices", ","],
        status=1, message="'' is not a device", absent=["{tmp}/m"]),
    stylize_row("--input", "{content}", "--output", "{tmp}/o.png", "--batch-size", "0", status=1,
                message="--batch-size must be a positive number"),
    stylize_row("--input", "{content}", "--output", "{content}", "--overwrite", status=1,
                message="is the input", exist=["{content}"]),
    stylize_row("--input", "{content}", "--output", "{tmp}/o.png", "--precision", "bfloat16", status=1,
                message="training.json is damaged", fault=damaged_training_json, absent=["{tmp}/o.png"]),
    stylize_row("--input", "{content}", "--output", "{tmp}/o.png", status=0,
                message="using the model folder's checkpoint instead", fault=damaged_saved_model,
                exist=["{tmp}/o.png"]),
    stylize_row("--input", "{content}", "--output", "{tmp}/o.png", status=1,
                message="saved_model is damaged", fault=damaged_saved_model_and_no_checkpoints,
                absent=["{tmp}/o.png"]),
    stylize_row("--input", "{tmp}/photos", "--output", "{tmp}/styled", status=0, message="",
                fault=colliding_folder, exist=["{tmp}/styled/photo.png", "{tmp}/styled/photo_gif.png"]),
    stylize_row("--input", "{tmp}/clip.mp4", "--output", "{tmp}/out.mp4", status=1,
                message="frames its header promises", fault=truncated_video, exist=["{tmp}/out.mp4"],
                absent=["{tmp}/.out*"]),
    stylize_row("--input", "{tmp}/clip.mp4", "--output", "{tmp}/out.mp4", status=1,
                message="it is saved as", fault=video_rename_fails, absent=["{tmp}/out.mp4", "{tmp}/.out*"],
                exist=[f"{{tmp}}/out.unsaved-{os.getpid()}.mp4"]),
    Row(["export", "--model", "{model}"], 0, "using the earlier intact checkpoint",
        fault=damaged_latest_checkpoint, exist=["{model}/saved_model/saved_model.pb"]),
    Row(["export", "--model", "{model}"], 1, "every checkpoint in", fault=damaged_every_checkpoint),
]


@pytest.mark.parametrize("row", FAST_STYLE, ids=str)
def test_fast_style(row, fast_places, monkeypatch, capsys):
    check(row, fast_style.main, fast_places, monkeypatch, capsys)


def test_resume_passes_over_a_damaged_checkpoint(fast_places, tiny16, capsys, monkeypatch):
    damaged_latest_checkpoint(monkeypatch, fast_places)
    monkeypatch.setattr(fast_apply, "export", lambda model_dir: None)
    assert fast_style.main(["train", "--model", str(fast_places["model"]), "--resume", "--steps", "5"]) == 0
    assert "using the earlier intact checkpoint" in capsys.readouterr().err
    steps = [entry["step"] for entry in fast_train.read_losses(fast_places["model"])]
    assert steps == [1, 2, 3, 4, 5]  # steps 3 and 4 computed again from checkpoint 2


# ---------------------------------------------------------------------------------------------
# Signals: a process of its own

def start(places, *extra):
    argv = [sys.executable, str(ROOT / "neural_style.py"), "--content", str(places["content"]), "--style",
            str(places["style"]), "--network", str(places["net"]), "--output", str(places["tmp"] / "out.png"),
            "--print-every", "1", "--iterations", "100000", *extra]
    return subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for_iterations(process):
    for line in process.stderr:
        if line.startswith("iteration 2/"):
            return
    pytest.fail(f"no progress: {process.communicate()}")


@pytest.mark.parametrize("signals, status", [
    ([signal.SIGINT, signal.SIGINT], 130),  # two presses 15 ms apart
    ([signal.SIGHUP], 130),  # the terminal closed: as SIGTERM
    ([signal.SIGTERM], 130),
])
def test_signals_still_save(places, signals, status):
    process = start(places)
    try:
        wait_for_iterations(process)
        for sig in signals:
            process.send_signal(sig)
            time.sleep(0.015)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, err
    assert "Traceback" not in err and "is saved as" in err
    assert images.load_image(places["tmp"] / "out.png").shape == (40, 48, 3)
    assert not [p for p in places["tmp"].iterdir() if p.name.startswith(".")]
