"""fast_apply.py through `fast_style.py stylize`: the export, and stylizing images, folders and videos
with the tiny trained model of conftest."""
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

import fast_apply
import fast_train
import images
from conftest import assert_exports_match, fast_style_cli as cli, smooth_image
from quiet_tf import tf


# ---- export -------------------------------------------------------------------------------------

def test_export_round_trips_to_the_same_output(trained):
    assert_exports_match(trained, smooth_image(24, 36, seed=3)[np.newaxis])


# ---- stylizing ----------------------------------------------------------------------------------

def test_stylize_an_image_keeps_its_size(trained, tmp_path, capsys):
    source = images.save_image(tmp_path / "in.jpg", smooth_image(27, 45, seed=5))
    out = tmp_path / "out.png"
    assert cli("stylize", "--model", trained, "--input", source, "--output", out) == 0
    assert images.load_image(out).shape == (27, 45, 3)
    assert cli("stylize", "--model", trained, "--input", source, "--output", out) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli("stylize", "--model", trained / "saved_model", "--input", source, "--output", out,
               "--overwrite", "--preserve-colors") == 0
    kept = images.rgb_to_yiq(images.load_image(out))[..., 1:]
    original = images.rgb_to_yiq(images.load_image(source))[..., 1:]
    assert np.abs(kept - original).mean() < 3  # the input's colours (I, Q), up to rounding and clipping


def test_stylize_a_folder_mirrors_it(trained, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("stylize", "--model", trained, "--input", inputs[0], "--output", out, "--batch-size", 3) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["photo0.png", "photo1.png", "photo2.png", "photo3.png", "sub/deep.jpg"]
    assert images.load_image(out / "photo2.png").shape == (48, 48, 3)
    captured = capsys.readouterr()
    assert "stylized 5 images" in captured.out and "broken.jpg" in captured.err
    assert cli("stylize", "--model", trained, "--input", inputs[0], "--output", out) == 1
    assert "5 of the outputs already exist" in capsys.readouterr().err


def write_video(path, frames, fps, audio=None):
    import imageio_ffmpeg
    writer = imageio_ffmpeg.write_frames(str(path), frames.shape[2:0:-1], fps=fps, macro_block_size=1,
                                         audio_path=audio and str(audio),
                                         output_params=["-loglevel", "error"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame.astype(np.uint8)))
    writer.close()


def read_video(path):
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, [np.frombuffer(f, np.uint8) for f in reader]


@pytest.mark.parametrize("with_sound", [False, True])
def test_a_video_round_trips_with_its_frame_rate_and_sound(trained, tmp_path, with_sound):
    sound = None
    if with_sound:
        sound = tmp_path / "tone.wav"
        with wave.open(str(sound), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes((np.sin(np.arange(4000) * 0.3) * 8000).astype(np.int16).tobytes())
    source, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(source, np.stack([smooth_image(32, 48, seed=i) for i in range(5)]), fps=12, audio=sound)
    assert cli("stylize", "--model", trained, "--input", source, "--output", out, "--batch-size", 2) == 0
    meta, frames = read_video(out)
    assert len(frames) == 5 and meta["size"] == (48, 32) and meta["fps"] == 12
    assert ("audio_codec" in meta) == with_sound
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_stylize_in_bfloat16_rebuilds_the_network_from_its_checkpoint(trained, tmp_path):
    photo = images.save_image(tmp_path / "photo.png", smooth_image(40, 52, seed=5))
    outputs = {}
    for precision in ("float32", "bfloat16"):
        outputs[precision] = tmp_path / f"{precision}.png"
        assert cli("stylize", "--model", trained, "--input", photo, "--output", outputs[precision],
                   "--precision", precision) == 0
    assert fast_apply.Stylizer(trained, "bfloat16").precision == "bfloat16"
    exported, reduced = (images.load_image(outputs[p]) for p in ("float32", "bfloat16"))
    difference = np.abs(exported - reduced)
    assert 0 < difference.max() and difference.mean() < 3.0  # rounding, not another network


def test_a_bare_saved_model_runs_in_float32_only(trained, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(Path(trained) / fast_train.SAVED_MODEL, bare)
    assert fast_apply.Stylizer(bare, "auto").precision == "float32"
    photo = images.save_image(tmp_path / "photo.png", smooth_image(40, 52))
    assert cli("stylize", "--model", bare, "--input", photo, "--output", tmp_path / "out.png",
               "--precision", "bfloat16") == 1
    assert "--precision bfloat16 rebuilds the network from the checkpoints" in capsys.readouterr().err


def test_an_image_too_large_for_memory_is_stylized_smaller(trained, monkeypatch):
    stylizer = fast_apply.Stylizer(trained)
    run = stylizer.run

    def limited(images):
        if images.shape[1] * images.shape[2] > 600:
            raise tf.errors.ResourceExhaustedError(None, None, "out of memory")
        return run(images)

    monkeypatch.setattr(stylizer, "run", limited)
    result = stylizer(np.stack([smooth_image(40, 60, seed=i) for i in range(2)]))
    assert result.shape == (2, 40, 60, 3) and stylizer.reduced
