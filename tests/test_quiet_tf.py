"""TensorFlow is imported on first use, so `--help` and argparse's errors come without its seconds."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("neural_style.py", "fast_style.py", "figures.py", "vgg.py", "benchmark.py")
CHECK = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print("tensorflow imported" if "tensorflow" in sys.modules else "tensorflow not imported")
"""


def modules_after(*argv):
    done = subprocess.run([sys.executable, "-c", CHECK, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return done.stdout.splitlines()[-1], done.stderr


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_does_not_import_tensorflow(program):
    imported, _ = modules_after(program, "--help")
    assert imported == "tensorflow not imported"


def test_an_argument_error_does_not_import_tensorflow():
    imported, stderr = modules_after("neural_style.py", "--content", "photo.jpg", "--optimizer", "sgd")
    assert "invalid choice: 'sgd'" in stderr
    assert imported == "tensorflow not imported"


def test_tf_imports_on_first_use():
    from quiet_tf import tf
    assert tf.constant(2.0).numpy() == 2.0 and "tensorflow" in sys.modules
