"""benchmark.py: every section runs (on a tiny network), and its memory probe measures itself."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark


@pytest.mark.slow
def test_benchmark_quick_runs_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--json", str(out), "--only", "steps,memory,quality,startup,feedforward"]) == 0
    results = json.loads(out.read_text())
    steps = results["steps"]
    assert {(r["precision"], r["optimizer"]) for r in steps} >= {("float32", "adam"), ("float32", "lbfgs")}
    assert all(r["seconds"] > 0 for r in steps)
    assert all(r["peak_rss_gb"] > 0 for r in results["memory"])
    quality = results["quality"]
    assert quality["reference_seconds"] > 0 and quality["target_loss"] > 0
    assert results["startup"]["seconds"] > 0
    assert results["feedforward"][0]["median"] > 0 and results["feedforward"][-1]["steps_per_second"] > 0
    assert "Adam step" in capsys.readouterr().out


def test_memory_probe_reports_its_own_peak_not_its_parents():
    held = bytearray(2 * 2 ** 30)  # this process's peak is now over 2 GB
    held[::4096] = b"x" * len(range(0, len(held), 4096))  # touch every page: resident
    code = "import benchmark; benchmark.tf.constant(0); print(benchmark.peak_rss_kb())"  # TF on first use
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(benchmark.__file__).parent, check=True)
    del held
    child_peak_gb = int(done.stdout.split()[-1]) / 2 ** 20
    assert 0.05 < child_peak_gb < 1.5  # TensorFlow's import, not the 2 GB it never held
