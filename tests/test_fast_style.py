"""fast_style.py's command line: the export command and the mistakes a user can make, each one clear
error (training is tested in test_fast_train.py, using a model in test_fast_apply.py)."""

import pytest

import images
from conftest import fast_style_cli as cli, smooth_image, train_args


def test_export_command_rewrites_the_export(trained, capsys):
    before = (trained / "model.tflite").stat().st_mtime_ns
    assert cli("export", "--model", trained) == 0
    assert (trained / "model.tflite").stat().st_mtime_ns > before
    assert "exported" in capsys.readouterr().out


# ---- mistakes -----------------------------------------------------------------------------------

def empty_folder(root):
    (root / "empty").mkdir()
    return root / "empty"


def only_unreadable(root):
    (root / "bad").mkdir()
    (root / "bad" / "a.jpg").write_text("no")
    (root / "bad" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root / "bad"


@pytest.mark.parametrize("make_data, message", [
    (empty_folder, "holds no images"),
    (only_unreadable, "none of the 2 image files in the data folder could be read"),
    (lambda root: root / "missing", "does not exist"),
])
def test_bad_data_folders_give_one_clear_error(inputs, tiny16, tmp_path, capsys, make_data, message):
    data = make_data(tmp_path)
    args = train_args(inputs, tiny16, tmp_path / "model", 1)
    args[args.index("--data") + 1] = data
    assert cli(*args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size must be a positive number"),
    (["--widths", "8,8"], "--widths takes three"),
    (["--style-layers", "relu9_9"], "'relu9_9' is not in"),
    (["--style", "missing.png"], "style image"),
])
def test_bad_training_options_give_one_clear_error(inputs, tiny16, tmp_path, capsys, extra, message):
    assert cli(*train_args(inputs, tiny16, tmp_path / "model", 1), *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bad_stylize_inputs_give_one_clear_error(trained, tmp_path, capsys):
    image = images.save_image(tmp_path / "in.png", smooth_image(20, 20))
    tiny = images.save_image(tmp_path / "tiny.png", smooth_image(3, 20))
    (tmp_path / "video.mp4").write_text("not a video")
    cases = [
        (tmp_path / "nowhere", image, tmp_path / "o.png", "does not exist"),
        (tmp_path, image, tmp_path / "o.png", "holds no exported network"),
        (trained, tmp_path / "missing.png", tmp_path / "o.png", "input"),
        (trained, tiny, tmp_path / "o.png", "needs at least 5 px"),
        (trained, image, tmp_path / "o.gifv", "unsupported extension"),
        (trained, tmp_path / "video.mp4", tmp_path / "o.mp4", "cannot be read"),
    ]
    for model, source, output, message in cases:
        assert cli("stylize", "--model", model, "--input", source, "--output", output) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (message, err)


def test_export_without_a_training_says_so(tmp_path, capsys):
    assert cli("export", "--model", tmp_path) == 1
    assert "holds no training" in capsys.readouterr().err
