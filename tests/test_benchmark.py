"""benchmark.py: every section runs (on a tiny network), and its memory probe measures itself."""
import json

import numpy as np
import os
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark
import images
from conftest import smooth_image, stripes_image

CONTENT, STYLE = smooth_image(48, 64), stripes_image(40, 40)


@pytest.mark.slow
def test_benchmark_quick_runs_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--json", str(out), "--only", "steps,paired,fast,memory,quality,startup,feedforward"]) == 0
    results = json.loads(out.read_text())
    steps = results["steps"]
    assert {(r["precision"], r["optimizer"], r["lbfgs_impl"]) for r in steps} >= {
        ("float32", "adam", None), ("float32", "lbfgs", "scipy"), ("float32", "lbfgs", "tf")}
    assert all(r["seconds"] > 0 for r in steps)
    assert {r["size"] for r in steps if r["optimizer"] == "plain"} == {r["size"] for r in steps}
    paired = results["paired"]
    assert {(r["size"], r["precision"]) for r in paired} >= {(r["size"], "float32") for r in steps}
    for r in paired:  # the ratios are of the medians' own rounds, each the same three steps
        assert r["rounds"] == 2 and r["plain_seconds"] > 0 and r["adam_seconds"] > 0 and r["lbfgs_seconds"] > 0
        assert 0 < r["adam_over_plain"] < np.inf and 0 < r["lbfgs_over_adam"] < np.inf
    fast = results["fast"]
    assert fast["seconds"] > 0 and fast["plain_steps"] == pytest.approx(
        fast["seconds"] / np.mean(fast["plain_step_seconds"]), rel=0.01)
    assert all(r["peak_rss_gb"] > 0 for r in results["memory"])
    quality = results["quality"]
    assert quality["reference_seconds"] > 0 and quality["target_loss"] > 0
    assert results["startup"]["seconds"] > 0
    assert results["feedforward"][0]["median"] > 0 and results["feedforward"][-1]["steps_per_second"] > 0
    printed = capsys.readouterr().out
    assert "Adam step" in printed and "Adam / plain float32 step" in printed and "L-BFGS / Adam |" in printed and "plain float32 steps" in printed


def test_memory_probe_reports_its_own_peak_not_its_parents():
    held = bytearray(2 * 2 ** 30)  # this process's peak is now over 2 GB
    held[::4096] = b"x" * len(range(0, len(held), 4096))  # touch every page: resident
    code = "import benchmark; benchmark.tf.constant(0); print(benchmark.peak_rss_kb())"  # TF on first use
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(benchmark.__file__).parent, check=True)
    del held
    child_peak_gb = int(done.stdout.split()[-1]) / 2 ** 20
    assert 0.05 < child_peak_gb < 1.5  # TensorFlow's import, not the 2 GB it never held


def test_gpu_check_on_a_machine_without_one_says_so_in_one_line(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "benchmark.py", "--gpu", "--quick", "--json", str(out)],
                          capture_output=True, text=True, cwd=Path(benchmark.__file__).parent,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 1 and not out.exists()
    assert done.stderr.strip().splitlines() == [
        "error: benchmark.py --gpu: TensorFlow sees no GPU on this machine; nothing was measured"]


def _image_files(folder):
    content, style = folder / "content.png", folder / "style.png"
    images.save_image(content, CONTENT)
    images.save_image(style, STYLE)
    return content, style


@pytest.mark.slow
def test_gpu_check_runs_its_measurements(tiny_network, tiny_mat, tmp_path):
    """The GPU check's own code, on this machine's CPU with the tiny network and sizes."""
    result = benchmark.gpu_check(tiny_network, tiny_mat, *_image_files(tmp_path), step_size=48, fast_sizes=(40,),
                                 run_iterations=4, repeats=2, fast_options=benchmark.QUICK_FAST)
    assert result["auto_precision"] in ("float32", "bfloat16") and result["gpus"] == []
    assert {(r["precision"], r["optimizer"], r["lbfgs_impl"]) for r in result["short_runs"]} == {
        (p, o, i) for p in ("bfloat16", "float16") for o, i in benchmark.OPTIMIZERS}
    assert all(r["stable"] for r in result["short_runs"])
    assert all(r["lowest_loss"] < r["first_loss"] for r in result["short_runs"] if r["optimizer"] == "lbfgs")
    assert {r["lbfgs_impl"] for r in result["steps"]} == {None, "scipy", "tf"}
    fast = result["fast"][0]  # the same command timer as the fast section
    assert fast["seconds"] > 0 and fast["plain_steps"] > 0 and fast["image"] == "40x30"
    assert "GPU check" in benchmark.table({"machine": {}, "network": "tiny", "gpu": result})


def test_gpu_check_leaves_out_the_sizes_past_its_budget(tiny_network, tiny_mat, tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "fast_command", lambda *args: pytest.fail("timed a size past the budget"))
    result = benchmark.gpu_check(tiny_network, tiny_mat, *_image_files(tmp_path), step_size=48,
                                 fast_sizes=(40, 48), run_iterations=2, repeats=1, budget=0.0)
    assert [r["size"] for r in result["fast"]] == [40, 48] and all("budget" in r["skipped"] for r in result["fast"])
    assert "past the time budget" in benchmark.table({"machine": {}, "network": "tiny", "gpu": result})


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "256,-3"], "--sizes must be long sides in pixels"),
    (["--memory-sizes", "big"], "--memory-sizes must be long sides in pixels"),
    (["--fast-size", "0"], "--fast-size must be a positive number, not 0"),
    (["--repeats", "nan"], "'nan' is not a whole number"),
    (["--only", "stesp"], "--only takes sections from"),
    (["--only", "gpu"], "--only takes sections from"),  # the GPU check is --gpu, which checks for one
    (["--quick", "--sizes", "abc"], "--sizes must be long sides in pixels"),  # --quick replaces valid ones
    (["--precisions", "float64"], "--precisions takes float32, bfloat16 and float16, not 'float64'"),
    (["--json", "/nonexistent-folder/b.json"], "--json folder /nonexistent-folder does not exist"),
])
def test_bad_arguments_are_one_line_before_any_work(argv, message, monkeypatch):
    monkeypatch.setattr(benchmark, "ensure_random_network", lambda quick: pytest.fail("started work"))
    with pytest.raises(benchmark.UserError, match=message):
        benchmark.main(argv)
