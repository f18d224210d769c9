"""neural_style.py end to end at 32-64 px on a tiny network: results, presets, progress, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import images
import neural_style
import vgg
from conftest import STYLE_A, STYLE_B, smooth_image, stripes_image

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return neural_style.main([str(a) for a in args])


@pytest.fixture
def base(tiny_mat, image_files, tmp_path):
    content, style = image_files
    return ["--content", content, "--style", style, "--network", tiny_mat, "--iterations", 4]


def test_end_to_end_writes_the_image_and_the_progress_file(base, tmp_path, capsys):
    out, log = tmp_path / "out.png", tmp_path / "progress.jsonl"
    assert cli(*base, "--output", out, "--progress-file", log, "--seed", 1) == 0
    result = images.load_image(out)
    assert result.shape == (40, 48, 3)  # the content's size (under --max-size)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3, 4]
    assert set(records[0]) == {"iteration", "seconds", "content_loss", "style_loss", "tv_loss", "total_loss"}
    assert records[-1]["total_loss"] < records[0]["total_loss"]
    # The total is alpha * content + beta * style + tv * TV with the write-up's alpha = 5, beta = 100.
    r = records[2]
    assert r["total_loss"] == pytest.approx(5 * r["content_loss"] + 100 * r["style_loss"], rel=1e-4)
    assert f"saved {out}" in capsys.readouterr().out


def test_progress_plot_is_drawn_beside_the_output(base, tmp_path):
    out = tmp_path / "out.png"
    assert cli(*base, "--output", out, "--progress-plot", "--print-every", 2) == 0
    from PIL import Image
    with Image.open(tmp_path / "out.losses.png") as picture:
        assert picture.format == "PNG"
    assert cli(*base, "--output", out, "--progress-plot", "--overwrite") == 0


def test_max_size_caps_the_long_side(base, tmp_path):
    out = tmp_path / "small.png"
    assert cli(*base, "--output", out, "--max-size", 32) == 0
    assert images.load_image(out).shape == (27, 32, 3)


def test_the_allocator_is_chosen_for_the_output_size_before_any_resize(base, tmp_path, monkeypatch):
    import stylize
    calls = []
    monkeypatch.setattr(stylize, "use_returning_allocator", lambda height, width: calls.append((height, width)))
    resize = images.resize
    monkeypatch.setattr(images, "resize", lambda *a: calls.append("resize") or resize(*a))
    assert cli(*base, "--output", tmp_path / "small.png", "--max-size", 32) == 0
    assert calls[:2] == [(27, 32), "resize"]


@pytest.mark.parametrize("option", ["--snapshot-every", "--checkpoint-every"])  # the new name, the old
def test_checkpoints_are_numbered_images(base, tmp_path, option):
    out = tmp_path / "out.png"
    assert cli(*base, "--output", out, option, 2) == 0
    assert sorted(p.name for p in tmp_path.glob("out_*.png")) == ["out_00002.png", "out_00004.png"]


def test_existing_output_is_not_replaced_without_overwrite(base, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    assert cli(*base, "--output", out) == 1
    assert out.read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err
    assert cli(*base, "--output", out, "--overwrite") == 0
    assert images.load_image(out).shape == (40, 48, 3)


def test_same_seed_same_image(base, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cli(*base, "--output", a, "--seed", 5)
    cli(*base, "--output", b, "--seed", 5)
    np.testing.assert_array_equal(images.load_image(a), images.load_image(b))


def test_lbfgs_preserve_colors_and_several_styles(base, tmp_path, image_files):
    other = images.save_image(tmp_path / "other.png", smooth_image(30, 50, seed=4))
    out, log = tmp_path / "out.png", tmp_path / "p.jsonl"
    args = list(base)
    style_at = args.index("--style")
    args[style_at + 1:style_at + 2] = [image_files[1], other]
    assert cli(*args, "--output", out, "--optimizer", "lbfgs", "--preserve-colors",
               "--style-blend-weights", "1", "2", "--progress-file", log) == 0
    assert len(log.read_text().splitlines()) == 5  # iteration 0 and 4 evaluations


def test_presets_and_overrides():
    args = neural_style.parse_args(["--content", "c.jpg", "--style", "s.jpg", "--output", "o.png"])
    s, max_size = neural_style.settings_from(args)
    assert s.content_layers == {"relu5_2": 1.0}
    assert s.style_layers == {"relu1_1": 0.5, "relu2_1": 1.0, "relu3_1": 1.5, "relu4_1": 3.0, "relu5_1": 4.0}
    assert (s.content_weight, s.style_weight, s.optimizer, s.learning_rate, s.iterations) == (5, 100, "adam", 2.0, 3000)
    assert (s.init, s.noise_ratio, s.pooling, max_size, s.tv_weight) == ("blend", 0.75, "avg", 512, 0)
    args = neural_style.parse_args(["--content", "c", "--style", "s", "--output", "o.png", "--preset", "gatys2016"])
    s, _ = neural_style.settings_from(args)
    assert s.content_layers == {"relu4_2": 1.0}
    assert s.style_layers == {f"relu{i}_1": pytest.approx(0.2) for i in range(1, 6)}
    assert s.content_weight / s.style_weight == pytest.approx(1e-3)
    assert (s.optimizer, s.init, s.pooling) == ("lbfgs", "noise", "avg")
    args = neural_style.parse_args(["--content", "c", "--style", "s", "--output", "o.png", "--preset",
                                    "gatys2016", "--optimizer", "adam", "--style-layers",
                                    "relu1_1:0.5,relu2_1", "--pooling", "max", "--iterations", "7"])
    s, _ = neural_style.settings_from(args)
    assert (s.optimizer, s.pooling, s.iterations) == ("adam", "max", 7)
    assert s.style_layers == {"relu1_1": 0.5, "relu2_1": 0.5}


@pytest.mark.parametrize("preset", sorted(neural_style.PRESETS))
def test_every_option_overrides_every_preset(preset):
    """keras and tf-tutorial state fewer settings than the others; an option still reaches them
    (--balance auto was once dropped for those two)."""
    common = ["--content", "c", "--style", "s", "--output", "o.png", "--preset", preset, "--balance", "auto",
              "--noise-ratio", "0.3"]
    s, _ = neural_style.settings_from(neural_style.parse_args(
        common + ["--optimizer", "adam", "--learning-rate", "0.5", "--adam-beta1", "0.5"]))
    assert (s.balance, s.noise_ratio, s.learning_rate, s.adam_beta1) == ("auto", 0.3, 0.5, 0.5)
    s, _ = neural_style.settings_from(neural_style.parse_args(
        common + ["--optimizer", "lbfgs", "--lbfgs-impl", "scipy", "--lbfgs-round", "7"]))
    assert (s.balance, s.noise_ratio, s.lbfgs_impl, s.lbfgs_round) == ("auto", 0.3, "scipy", 7)


def test_init_image_option_implies_image_init(base, tmp_path):
    start = images.save_image(tmp_path / "start.png", np.full((10, 10, 3), 200.0))
    args = neural_style.parse_args(["--content", "c", "--style", "s", "--output", "o.png",
                                    "--init-image", str(start)])
    assert neural_style.settings_from(args)[0].init == "image"
    out = tmp_path / "o.png"
    assert cli(*base, "--output", out, "--init-image", start, "--iterations", 1, "--learning-rate", 0.01) == 0
    assert abs(images.load_image(out).mean() - 200) < 3


@pytest.mark.parametrize("extra, message", [
    (["--iterations", "0"], "--iterations must be a positive number"),
    (["--max-size", "-5"], "--max-size must be a positive number"),
    (["--style-layers", "relu9_9"], "'relu9_9' is not in"),
    (["--content-layers", "relu4_2:heavy"], "'heavy' in 'relu4_2:heavy' is not a number"),
    (["--style-blend-weights", "1", "2"], "2 style blend weights given for 1 style image"),
    (["--max-size", "12"], "needs at least 16 px"),
    (["--init", "image"], "--init image needs --init-image"),
    (["--noise-ratio", "2"], "noise ratio must be between 0 and 1"),
])
def test_bad_options_give_one_clear_error(base, tmp_path, capsys, extra, message):
    out = tmp_path / "out.png"
    assert cli(*base, "--output", out, *extra) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert "Traceback" not in err
    assert not out.exists()


def test_unknown_layer_lists_the_available_ones(base, tmp_path, capsys):
    assert cli(*base, "--output", tmp_path / "o.png", "--content-layers", "conv4_5") == 1
    err = capsys.readouterr().err
    assert "relu4_2" in err and "conv5_4" in err


@pytest.mark.parametrize("which, make, message", [
    ("--content", lambda p: None, "does not exist"),
    ("--content", lambda p: p.write_text("not an image"), "is not an image"),
    ("--style", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00"), "style image"),
    ("--network", lambda p: p.write_text("<html>Not Found</html>"), "web page"),
    ("--network", lambda p: None, "vgg.py download"),
])
def test_bad_files_give_one_clear_error(base, tmp_path, capsys, which, make, message):
    bad = tmp_path / ("bad.mat" if which == "--network" else "bad.png")
    make(bad)
    args = list(base)
    args[args.index(which) + 1] = bad
    assert cli(*args, "--output", tmp_path / "out.png") == 1
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and "Traceback" not in err


def test_unsupported_output_format_fails_before_the_run(base, tmp_path, capsys):
    assert cli(*base, "--output", tmp_path / "out.gifv") == 1
    assert "unsupported extension" in capsys.readouterr().err


def test_default_network_is_downloaded_on_first_use(base, tmp_path, tiny_mat, serve, monkeypatch):
    import hashlib
    url, _ = serve(body=tiny_mat.read_bytes())
    dest = tmp_path / "weights" / "imagenet-vgg-verydeep-19.mat"
    monkeypatch.setattr(vgg, "DEFAULT_PATH", dest)
    monkeypatch.setattr(vgg, "URL", url)
    monkeypatch.setattr(vgg, "SHA256", hashlib.sha256(tiny_mat.read_bytes()).hexdigest())
    args = list(base)
    del args[args.index("--network"):args.index("--network") + 2]
    assert cli(*args, "--output", tmp_path / "out.png") == 0
    assert dest.read_bytes() == tiny_mat.read_bytes()


def test_no_network_prints_the_url_and_checksum(base, tmp_path, monkeypatch, capsys):
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/imagenet-vgg-verydeep-19.mat"
    monkeypatch.setattr(vgg, "DEFAULT_PATH", tmp_path / "weights" / "net.mat")
    monkeypatch.setattr(vgg, "URL", url)
    args = list(base)
    del args[args.index("--network"):args.index("--network") + 2]
    assert cli(*args, "--output", tmp_path / "out.png") == 1
    err = capsys.readouterr().err
    assert url in err and vgg.SHA256 in err and "Traceback" not in err
    assert not (tmp_path / "weights" / "net.mat").exists()


# ---- as a user runs it: a separate process --------------------------------------------------

def run_script(*args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "neural_style.py"), *map(str, args)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_user_mistake_prints_one_line_and_no_tensorflow_chatter(tmp_path, tiny_mat):
    process = run_script("--content", tmp_path / "missing.jpg", "--style", tmp_path / "s.jpg",
                         "--output", tmp_path / "o.png", "--network", tiny_mat)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.strip().splitlines() == [f"error: content image {tmp_path / 'missing.jpg'} does not exist"]


@pytest.mark.slow
def test_ctrl_c_saves_the_current_image(tmp_path, tiny_mat, image_files):
    content, style = image_files
    out, log = tmp_path / "out.png", tmp_path / "progress.jsonl"
    process = run_script("--content", content, "--style", style, "--network", tiny_mat, "--output", out,
                         "--iterations", 100000, "--progress-file", log)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err and "interrupted" in err
    assert images.load_image(out).shape == (40, 48, 3)
    last = json.loads(log.read_text().splitlines()[-1])["iteration"]
    assert f"iteration {last} is saved" in err


def test_writeup_exact_keeps_the_native_size_and_writes_a_jpeg_every_100_steps(tiny_mat, tmp_path):
    content = images.save_image(tmp_path / "wide.png", smooth_image(24, 530))  # wider than --max-size 512
    style = images.save_image(tmp_path / "style.png", stripes_image(40, 40))
    out = tmp_path / "out.png"
    assert cli("--content", content, "--style", style, "--network", tiny_mat, "--writeup-exact",
               "--iterations", 201, "--output", out) == 0
    assert images.load_image(out).shape == (24, 530, 3)
    snapshots = sorted(p.name for p in tmp_path.glob("out_*.jpg"))
    assert snapshots == ["out_0.jpg", "out_100.jpg", "out_200.jpg"]  # the write-up's i % 100 == 0
    assert images.load_image(tmp_path / "out_200.jpg").shape == (24, 530, 3)


@pytest.mark.parametrize("options, names, not_names", [
    (["--snapshot-every", "2", "--scales", "0.5:3,1", "--iterations", "2"],  # 3 + 2 iterations in all
     ["o_00002.png", "o_00004.png"], ["o_00003.png", "o_00006.png", "o_00000.png", "o_2.png", "o_00002.jpg"]),
    (["--writeup-exact", "--iterations", "201"], ["o_0.jpg", "o_100.jpg", "o_200.jpg"],  # as the run writes them
     ["o_300.jpg", "o_50.jpg", "o_00100.png", "o_0100.jpg"]),
    (["--iterations", "1000000000000", "--snapshot-every", "1"], ["o_999999999999.png"], ["o_x.png", "p_00001.png"])])
def test_a_snapshot_name_is_told_from_the_name_alone(base, tmp_path, options, names, not_names):
    args = neural_style.parse_args([str(a) for a in base] + ["--output", str(tmp_path / "o.png"), *options])
    settings = neural_style.settings_from(args)[0]
    assert all(neural_style.takes_a_snapshot_name(args, settings, tmp_path / name) for name in names)
    assert not any(neural_style.takes_a_snapshot_name(args, settings, tmp_path / name) for name in not_names)
    assert not neural_style.takes_a_snapshot_name(args, settings, tmp_path / "elsewhere" / names[0])


@pytest.mark.parametrize("extra, message", [(["--preset", "keras"], "cannot be combined"),
                                            (["--max-size", "64"], "native size")])
def test_writeup_exact_refuses_what_the_write_up_did_not_do(base, tmp_path, capsys, extra, message):
    assert cli(*base, "--writeup-exact", *extra, "--output", tmp_path / "o.png") == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, option, used", [
    (["--preset", "fast", "--optimizer", "adam", "--lbfgs-preconditioned"], "--lbfgs-preconditioned", "Adam"),
    (["--preset", "fast", "--lbfgs-impl", "scipy", "--lbfgs-preconditioned"], "--lbfgs-preconditioned",
     "scipy's L-BFGS-B"),
    (["--preset", "fast", "--learning-rate", "5"], "--learning-rate", "lbfgs.py's L-BFGS"),
    (["--preset", "keras", "--adam-epsilon", "0.5"], "--adam-epsilon", "scipy's L-BFGS-B"),
    (["--preset", "fast", "--optimizer", "lbfgs", "--adam-beta1", "0.5"], "--adam-beta1", "lbfgs.py's L-BFGS"),
    (["--lbfgs-round", "7"], "--lbfgs-round", "Adam"),  # the writeup preset: Adam
    (["--preset", "fast", "--lbfgs-round", "7"], "--lbfgs-round", "lbfgs.py's L-BFGS"),
    (["--preset", "tf-tutorial", "--lbfgs-impl", "tf"], "--lbfgs-impl", "Adam")])
def test_an_option_of_the_optimiser_the_run_does_not_use_is_refused(base, tmp_path, capsys, extra, option, used):
    assert cli(*base, *extra, "--output", tmp_path / "o.png") == 1
    err = capsys.readouterr().err
    assert f"{option} is an option of" in err and f"this run uses {used}, so it would do nothing" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("extra, hint", [
    (["--lbfgs-round", "7"], "use --optimizer lbfgs --lbfgs-impl scipy, or leave it out"),
    (["--preset", "fast", "--lbfgs-impl", "scipy", "--lbfgs-preconditioned"], "use --lbfgs-impl tf, or leave"),
    (["--preset", "fast", "--learning-rate", "5"], "use --optimizer adam, or leave it out")])
def test_the_refusal_names_only_what_to_change(base, tmp_path, capsys, extra, hint):
    assert cli(*base, *extra, "--output", tmp_path / "o.png") == 1
    assert hint in capsys.readouterr().err


def test_an_input_named_like_a_snapshot_is_kept_without_overwrite(base, tmp_path):
    content = tmp_path / "o_00001.png"
    shutil.copy(base[1], content)
    before = content.read_bytes()
    assert cli("--content", content, *base[2:], "--output", tmp_path / "o.png", "--snapshot-every", 1,
               "--iterations", 2) == 0
    assert content.read_bytes() == before and (tmp_path / "o_00001.1.png").exists()


def test_fast_with_adam_is_accepted_though_fast_turns_the_preconditioning_on(base):
    args = neural_style.parse_args([str(a) for a in base] + ["--output", "x.png", "--preset", "fast",
                                                             "--optimizer", "adam"])
    s, _ = neural_style.settings_from(args)
    assert (s.optimizer, s.lbfgs_preconditioned) == ("adam", True)
    args = neural_style.parse_args([str(a) for a in base] + ["--output", "x.png", "--optimizer", "adam",
                                                             "--no-lbfgs-preconditioned"])
    assert neural_style.settings_from(args)[0].lbfgs_preconditioned is False


def test_keras_preset_renders_400_px_high_from_the_content(base, tmp_path):
    out, log = tmp_path / "k.png", tmp_path / "k.jsonl"
    assert cli(*base, "--preset", "keras", "--iterations", 2, "--output", out, "--progress-file", log) == 0
    assert images.load_image(out).shape == (400, 480, 3)  # 40x48 content: rows 400, cols int(48 * 400 / 40)
    first = json.loads(log.read_text().splitlines()[0])
    assert first["content_loss"] == 0.0  # it starts from the content image
    assert first["total_loss"] == pytest.approx(0.025 * first["content_loss"] + first["style_loss"]
                                                + first["tv_loss"], rel=1e-4)


def test_adam_and_unit_options_reach_the_settings(base):
    args = neural_style.parse_args([str(a) for a in base] + [
        "--output", "x.png", "--loss-units", "tf-tutorial", "--adam-beta1", "0.99", "--adam-epsilon", "0.5",
        "--no-clip-image"])
    s, _ = neural_style.settings_from(args)
    assert (s.loss_units, s.adam_beta1, s.adam_epsilon, s.clip_image) == ("tf-tutorial", 0.99, 0.5, False)
    s, _ = neural_style.settings_from(neural_style.parse_args([str(a) for a in base] + [
        "--output", "x.png", "--preset", "keras", "--lbfgs-round", "7"]))
    assert (s.optimizer, s.lbfgs_impl, s.lbfgs_round) == ("lbfgs", "scipy", 7)
    s, max_size = neural_style.settings_from(neural_style.parse_args(
        [str(a) for a in base] + ["--output", "x.png", "--preset", "tf-tutorial"]))
    assert (s.loss_units, s.optimizer, s.adam_beta1, max_size) == ("tf-tutorial", "adam", 0.99, 512)


# ---- perceptual controls on the command line (moved from test_figures.py) ------------------------

CONTENT = smooth_image(32, 40)


def test_cli_runs_every_control(tiny_mat, tmp_path):
    import neural_style
    content = images.save_image(tmp_path / "c.png", CONTENT)
    style_a = images.save_image(tmp_path / "a.png", STYLE_A)
    style_b = images.save_image(tmp_path / "b.png", STYLE_B)
    mask = np.zeros((32, 40, 3))
    mask[:16] = 255
    top = images.save_image(tmp_path / "top.png", mask)
    bottom = images.save_image(tmp_path / "bottom.png", 255 - mask)
    common = ["--content", str(content), "--network", str(tiny_mat), "--iterations", "2",
              "--content-layers", "relu4_2", "--style-layers", "relu1_1,relu3_1"]
    assert neural_style.main(common + ["--style", str(style_a), str(style_b), "--style-mask", str(top),
                                       str(bottom), "--output", str(tmp_path / "mask.png")]) == 0
    assert neural_style.main(common + ["--style", str(style_a), str(style_b), "--style-layer-sets",
                                       "relu1_1", "relu3_1", "--output", str(tmp_path / "scale.png")]) == 0
    assert neural_style.main(common + ["--style", str(style_a), "--color-control", "histogram",
                                       "--output", str(tmp_path / "hist.png")]) == 0
    assert neural_style.main(common + ["--style", str(style_a), "--preserve-colors", "--color-control",
                                       "histogram", "--output", str(tmp_path / "x.png")]) == 1
    assert neural_style.main(common + ["--style", str(style_a), "--normalize-network",
                                       "--output", str(tmp_path / "norm.png")]) == 0
    assert images.load_image(tmp_path / "mask.png").shape == (32, 40, 3)


def test_every_run_writes_its_record_with_the_hashes(base, tmp_path, tiny_mat, image_files):
    out = tmp_path / "out.png"
    assert cli(*base, "--output", out, "--seed", 1, "--loss-units", "authors", "--balance", "3") == 0
    record = json.loads((tmp_path / "out.json").read_text())
    content, style = image_files
    assert record["sha256"]["content"] == neural_style.file_sha256(content)
    assert record["sha256"]["style"] == [neural_style.file_sha256(style)]
    assert record["network_sha256"] == vgg.load(tiny_mat).sha256 and len(record["network_sha256"]) == 64
    assert record["loss_units"] == "authors" and record["balance_factor"] == 3.0
    assert record["options"]["seed"] == 1 and record["settings"]["loss_units"] == "authors"
    assert {"python", "tensorflow", "numpy"} <= set(record["versions"])


def test_fast_preset_balances_and_the_reproductions_keep_their_weights():
    from presets import PRESETS
    assert PRESETS["fast"]["balance"] == "auto"
    assert PRESETS["gatys2016"]["balance"] == "off" and PRESETS["gatys2016"]["loss_units"] == "authors"
    assert PRESETS["writeup"]["balance"] == "off" and PRESETS["writeup"]["loss_units"] == "printed"


@pytest.mark.parametrize("value", ["-2", "nan", "inf", "maybe"])
def test_bad_balance_is_refused_before_the_run(base, tmp_path, value, capsys):
    try:
        code = cli(*base, "--output", tmp_path / "o.png", "--balance", value)
    except SystemExit as stop:
        code = stop.code
    assert code not in (0, None) and not (tmp_path / "o.png").exists()
    assert "--balance" in capsys.readouterr().err
