import numpy as np
from PIL import Image

import plots


def test_the_plot_is_a_png_and_no_temporary_file_is_left(tmp_path):
    path = tmp_path / "out.losses.png"
    steps = list(range(1, 21))
    plots.save_loss_plot(path, steps, {"content": [100.0 / s for s in steps], "tv": [0.0] * 20}, "test")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (800, 450)
        pixels = np.asarray(picture.convert("L"))
    assert pixels.min() < 128  # something is drawn on the white page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.losses.png"]


def test_a_plot_that_cannot_be_written_is_a_warning(tmp_path, capsys):
    path = tmp_path / "missing folder" / "losses.png"
    assert plots.try_save_loss_plot(path, [1, 2], {"total": [2.0, 1.0]}, "test") is None
    assert capsys.readouterr().err.startswith(f"warning: could not write the loss plot {path}")
