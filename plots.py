"""Loss curves as pictures, for users who would rather look than read: `neural_style.py
--progress-plot` (OUTPUT.losses.png) and `fast_style.py train` (MODEL/losses.png) draw them with
this one function. matplotlib runs without a display (its Agg canvas); the file is written beside
the target and renamed, so a reader never sees half a picture. A plot that cannot be drawn is a
warning: the run it illustrates goes on.
"""
import sys

import files


def save_loss_plot(path, steps, series, title, xlabel="iteration"):
    """Each of `series` ({name: one value per step}) against `steps`, on a log scale, as a PNG at
    `path`. Series without a positive value (a term weighted 0) are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for name, values in series.items():
        if any(value > 0 for value in values):
            axes.plot(steps, values, label=name, linewidth=1.2)
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("loss")
    axes.set_title(title)
    if axes.lines:
        axes.legend(fontsize="small")
    return files.write_atomic(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))


def try_save_loss_plot(path, steps, series, title, xlabel="iteration"):
    """save_loss_plot, with a failure printed as one warning line instead of ending the run."""
    try:
        return save_loss_plot(path, steps, series, title, xlabel)
    except Exception as error:  # matplotlib missing, a full disk, a bad value: the run matters more
        print(f"warning: could not write the loss plot {path} ({type(error).__name__}: {error})",
              file=sys.stderr)
        return None
