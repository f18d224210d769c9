"""Speed and memory of the style transfer on this machine, as one table (also written as JSON).

    python benchmark.py                        # everything, on a random full-size VGG19 (~1 h on 2 cores)
    python benchmark.py --network weights/imagenet-vgg-verydeep-19.mat --only steps,quality
    python benchmark.py --quick                # tiny sizes and a tiny network: proves it runs
    python benchmark.py --gpu                  # the GPU check, at most five minutes

Speed does not depend on the weights' values, so without --network the benchmark writes a VGG19
.mat with random weights of the real shapes (548 MB, kept in weights/ for the next run). Sections:
  steps    seconds per Adam step and per L-BFGS evaluation (median after a warm-up), per size and
           precision, timed through the same loop neural_style.py runs;
  paired   the issue's ratios from paired, alternating timings (the load of a shared machine drifts
           between separate runs): per size, the plain float32 step, and per precision the
           project's compiled Adam step and L-BFGS evaluation (lbfgs.py), timed in turn each round
           (--repeats rounds); medians of the per-round ratios;
  fast     seconds from the command `neural_style.py --preset fast` to its saved image, at 512 px,
           and the same in plain float32 steps (plain_step, timed in the same run);
  memory   peak resident memory of a whole run (a fresh process) at 512, 1024 and 2048 px;
  quality  time to quality: the write-up recipe (Adam, lr 2.0, float32, one scale) for 1000
           iterations gives an objective value; the fast preset's recipe, its full-size scale run
           on until it gets there, and its time to reach it (re-evaluated in float32 at full
           size), and the ratio of the two times;
  startup  seconds from the command to the first iteration of neural_style.py with a .mat of
           the real size;
  feedforward  fast_style.py: seconds to stylize a 512x512 image, training steps per second.
--gpu replaces them all with one section (on a machine with no GPU it says so and stops):
  gpu      what --precision auto picks, whether short Adam and L-BFGS runs in each reduced
           precision stay finite (float16 through its loss scaling), seconds per Adam step and per
           L-BFGS evaluation of both implementations at 512 px, and the fast preset from the command
           to the saved image (the fast section's timer) at 512, 1024 and 2048 px (a size not
           begun within the five minutes is left out).
"""
import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cli
import files
import images
import vgg
from errors import UserError
from presets import settings_for_preset
from quiet_tf import tf

ROOT = Path(__file__).resolve().parent
# The fast and memory sections run processes of their own beside this one: on a GPU this one must
# not take all of its memory first, as TensorFlow does by default (tf is imported on first use).
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
EXAMPLE_CONTENT = ROOT / "examples" / "chelsea.jpg"
EXAMPLE_STYLE = ROOT / "examples" / "swirls.jpg"
RANDOM_VGG19 = vgg.WEIGHTS_DIR / "random-vgg19-benchmark.mat"
SECTIONS = ("steps", "paired", "fast", "memory", "quality", "startup", "feedforward")
GPU_SECONDS = 300  # the --gpu check's budget
QUICK_FAST = ("--iterations", "2", "--scales", "0.5:2,1")  # --quick's fast runs, for the tests


def main(argv=None):
    parser = cli.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", type=Path, help="a .mat file (default: random VGG19 weights)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run: {','.join(SECTIONS)}")
    parser.add_argument("--sizes", default="256,512", help="long sides for the step timings")
    parser.add_argument("--memory-sizes", default="512,1024,2048")
    parser.add_argument("--precisions", help="default: float32 and the reduced ones this device runs")
    parser.add_argument("--repeats", type=cli.positive_int, default=5, help="timed iterations per measurement")
    parser.add_argument("--reference-iterations", type=cli.positive_int, default=1000)
    parser.add_argument("--content", type=Path, default=EXAMPLE_CONTENT)
    parser.add_argument("--style", type=Path, default=EXAMPLE_STYLE)
    parser.add_argument("--quality-size", type=cli.positive_int, default=512)
    parser.add_argument("--fast-size", type=cli.positive_int, default=512, help="long side of the fast section's run")
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"), help="where to write the results")
    parser.add_argument("--quick", action="store_true", help="tiny network and sizes (for the tests)")
    parser.add_argument("--gpu", action="store_true", help="the GPU check instead of the sections "
                        "(at most five minutes)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one run in a fresh process
    args = parser.parse_args(argv)
    if args.probe:
        return probe(args)
    if args.gpu and not tf.config.list_physical_devices("GPU"):
        raise UserError("benchmark.py --gpu: TensorFlow sees no GPU on this machine; nothing was measured")
    sizes, memory_sizes = _ints(args.sizes, "--sizes"), _ints(args.memory_sizes, "--memory-sizes")
    precisions = args.precisions.split(",") if args.precisions else default_precisions()
    if not set(precisions) <= {"float32", "bfloat16", "float16"}:
        raise UserError(f"--precisions takes float32, bfloat16 and float16, not '{args.precisions}'")
    files.check_folder(args.json, "--json")
    if args.quick:
        sizes, memory_sizes, args.repeats = [32, 48], [48], 2
        args.reference_iterations, args.quality_size, args.fast_size = 6, 64, 48
    sections = ["gpu"] if args.gpu else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [] if args.gpu else [section for section in sections if section not in SECTIONS]
    if unknown or not sections:
        raise UserError(f"--only takes sections from {','.join(SECTIONS)}, not '{args.only}'")
    network_path = args.network or ensure_random_network(args.quick)
    results = {"machine": machine(), "network": str(network_path)}
    network = vgg.load(network_path)
    content, style = images.load_image(args.content), images.load_image(args.style)
    if "gpu" in sections:
        results["gpu"] = gpu_check(network, network_path, args.content, args.style,
                                   fast_options=QUICK_FAST if args.quick else ())
    if "steps" in sections:
        results["steps"] = step_times(network, content, style, sizes, precisions, args.repeats)
    if "paired" in sections:
        results["paired"] = paired_ratios(network, content, style, sizes, precisions, args.repeats)
    if "fast" in sections:
        results["fast"] = fast_command(network, network_path, args.content, args.style, args.fast_size,
                                       args.repeats, QUICK_FAST if args.quick else ())
    if "memory" in sections:
        results["memory"] = memory(network_path, args, memory_sizes)
    if "quality" in sections:
        results["quality"] = time_to_quality(network, content, style, args.quality_size,
                                             args.reference_iterations)
    if "startup" in sections:
        results["startup"] = startup(network_path, args)
    if "feedforward" in sections:
        results["feedforward"] = feedforward_speed(network, precisions, args.quick)
    print(table(results))
    saved, failure = files.write_result(args.json, lambda temporary: Path(temporary).write_text(
        json.dumps(results, indent=2) + "\n"), "benchmark results")
    print(f"\n(written to {saved})")
    return 0 if failure is None else 1


def _ints(text, option):
    """'256,512' -> [256, 512]: positive whole numbers, else one line saying which option."""
    values = [int(v) if v.strip().isdigit() else 0 for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise UserError(f"{option} must be long sides in pixels separated by commas, e.g. 256,512, not '{text}'")
    return values


def machine():
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "tensorflow": tf.__version__, "auto_precision": vgg.resolve_precision("auto")}


def default_precisions():
    if tf.config.list_physical_devices("GPU"):
        return ["float32", "float16", "bfloat16"]
    return ["float32", "bfloat16"]


def ensure_random_network(quick):
    if quick:
        path = Path(tempfile.mkdtemp()) / "tiny-vgg19.mat"
        return vgg.write_random(path, widths=(4, 4, 8, 8, 8), classifier=(16, 10))
    if not RANDOM_VGG19.exists():
        print(f"writing {RANDOM_VGG19} (random weights, real VGG19 shapes) ...", file=sys.stderr)
        RANDOM_VGG19.parent.mkdir(exist_ok=True)
        partial = RANDOM_VGG19.with_suffix(".partial.mat")
        vgg.write_random(partial)
        os.replace(partial, RANDOM_VGG19)
    return RANDOM_VGG19


def fit(image, long_side):
    return images.fit_long_side(image, long_side)


def timed_run(network, content, style, settings):
    """Run stylize() and return the seconds of every iteration as the loop saw them."""
    from stylize import stylize
    seconds = []
    stylize(network, content, [style], settings, lambda p: seconds.append(p.seconds) or True)
    return np.diff(seconds)


# ---- steps ----------------------------------------------------------------------------------

def plain_step(network, content, style, settings):
    """One Adam step of the same objective written as plainly as TF2 allows (the issue's reference:
    its ratios are the project's step over this one): the file's convolutions in one tf.function,
    the printed losses, Adam, no progress, checks or per-layer bookkeeping. Returns a callable step."""
    layers = network.layers[:max(network.index(n) for n in (*settings.content_layers, *settings.style_layers)) + 1]
    weights = {l.name: (tf.constant(l.kernel), tf.constant(l.bias)) for l in layers if l.type == "conv"}
    mean = tf.constant(network.mean_pixel, tf.float32)

    def features(x):
        out, x = {}, x - mean
        for layer in layers:
            if layer.type == "conv":
                x = tf.nn.bias_add(tf.nn.conv2d(x, weights[layer.name][0], 1, "SAME"), weights[layer.name][1])
            elif layer.type == "relu":
                x = tf.nn.relu(x)
            else:
                x = tf.nn.avg_pool2d(x, 2, 2, "SAME")
            out[layer.name] = x
        return out

    def gram(f):
        flat = tf.reshape(f, [-1, f.shape[-1]])
        return tf.matmul(flat, flat, transpose_a=True)

    targets = features(tf.constant(content[np.newaxis], tf.float32))
    content_targets = {n: targets[n] for n in settings.content_layers}
    style_features = features(tf.constant(style[np.newaxis], tf.float32))
    grams = {n: gram(style_features[n]) for n in settings.style_layers}
    image = tf.Variable(content[np.newaxis].astype(np.float32))
    m, v = tf.Variable(tf.zeros_like(image)), tf.Variable(tf.zeros_like(image))
    t = tf.Variable(0.0)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            f = features(image)
            content_loss = tf.add_n([w * 0.5 * tf.reduce_sum(tf.square(f[n] - content_targets[n]))
                                     for n, w in settings.content_layers.items()])
            style_loss = tf.add_n([w * tf.reduce_sum(tf.square(gram(f[n]) - grams[n]))
                                   / (4.0 * f[n].shape[-1] ** 2 * (f[n].shape[1] * f[n].shape[2]) ** 2)
                                   for n, w in settings.style_layers.items()])
            loss = settings.content_weight * content_loss + settings.style_weight * style_loss
        g = tape.gradient(loss, image)
        t.assign_add(1.0)
        m.assign(0.9 * m + 0.1 * g)
        v.assign(0.999 * v + 0.001 * tf.square(g))
        image.assign_sub(settings.learning_rate * tf.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m
                         / (tf.sqrt(v) + 1e-8))
        return loss

    return lambda: float(step())


OPTIMIZERS = (("adam", None), ("lbfgs", "scipy"), ("lbfgs", "tf"))  # with the L-BFGS implementation


def step_times(network, content, style, sizes, precisions, repeats):
    rows = []
    base = settings_for_preset("writeup")
    for size in sizes:
        c = images.resize(content, size * 3 // 4, size)  # 4:3, as 512x384 in the targets
        plain = plain_step(network, c, fit(style, size), base)
        rows.append({"size": f"{c.shape[1]}x{c.shape[0]}", "precision": "float32", "optimizer": "plain",
                     "lbfgs_impl": None, "seconds": _time(plain, repeats, warmup=2)["median"]})
        print(f"  step {rows[-1]}", file=sys.stderr)
        for precision in precisions:
            for optimizer, impl in OPTIMIZERS:
                s = dataclasses.replace(base, optimizer=optimizer, lbfgs_impl=impl or base.lbfgs_impl,
                                        precision=precision, recompute=False, iterations=repeats + 2)
                per_iteration = timed_run(network, c, style, s)[2:]  # the first two trace and warm up
                rows.append({"size": f"{c.shape[1]}x{c.shape[0]}", "precision": precision,
                             "optimizer": optimizer, "lbfgs_impl": impl,
                             "seconds": float(np.median(per_iteration))})
                print(f"  step {rows[-1]}", file=sys.stderr)
    return rows


def paired_ratios(network, content, style, sizes, precisions, rounds):
    """Per size and precision: median over `rounds` of the Adam step over the plain float32 step
    and of the L-BFGS evaluation over the Adam step, the three timed one after another each round."""
    from stylize import Objective, adam_functions, lbfgs_optimizer
    from vgg import VGG
    base = settings_for_preset("writeup")
    layers = list(base.content_layers) + list(base.style_layers)
    rows = []
    for size in sizes:
        c = images.resize(content, size * 3 // 4, size)
        steps = {"plain": plain_step(network, c, fit(style, size), base)}
        for precision in precisions:
            objective = Objective(VGG(network, layers, pooling=base.pooling, dtype=precision), c,
                                  [fit(style, size)], [1.0], base)
            adam_step = adam_functions(objective, c, base)[3]
            optimizer = lbfgs_optimizer(objective, c[np.newaxis], preconditioned=True)  # fast's
            steps[precision, "adam"] = lambda step=adam_step: [t.numpy() for t in step()]
            steps[precision, "lbfgs"] = lambda optimizer=optimizer: float(optimizer.step()[0])
        for step in steps.values():  # trace and warm up
            step(), step()
        seconds = {key: [] for key in steps}
        for _ in range(rounds):
            for key, step in steps.items():
                began = time.perf_counter()
                step()
                seconds[key].append(time.perf_counter() - began)
        seconds = {key: np.array(value) for key, value in seconds.items()}
        for precision in precisions:
            adam, evaluation = seconds[precision, "adam"], seconds[precision, "lbfgs"]
            rows.append({"size": f"{c.shape[1]}x{c.shape[0]}", "precision": precision, "rounds": rounds,
                         "plain_seconds": float(np.median(seconds["plain"])),
                         "adam_seconds": float(np.median(adam)), "lbfgs_seconds": float(np.median(evaluation)),
                         "adam_over_plain": float(np.median(adam / seconds["plain"])),
                         "lbfgs_over_adam": float(np.median(evaluation / adam))})
            print(f"  paired {rows[-1]}", file=sys.stderr)
    return rows


# ---- the GPU check ------------------------------------------------------------------------------

def gpu_check(network, network_path, content_path, style_path, step_size=512, fast_sizes=(512, 1024, 2048),
              run_iterations=50, repeats=5, budget=GPU_SECONDS, fast_options=()):
    """What --precision auto picks, whether `run_iterations` of Adam and of L-BFGS (both
    implementations) in each reduced precision stay finite, the step timings at `step_size` in
    float32 and the automatic precision, and the fast preset's wall time per size while `budget`
    seconds last."""
    start = time.perf_counter()
    content, style = images.load_image(content_path), images.load_image(style_path)
    auto = vgg.resolve_precision("auto")
    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    names = [d.get("device_name", gpu.name) for d, gpu in zip(details, gpus)]
    result = {"auto_precision": auto, "gpus": names,
              "compute_capability": [list(d.get("compute_capability", ())) for d in details]}
    from stylize import stylize
    c = fit(content, step_size)
    stable = []
    for precision in ("bfloat16", "float16"):
        for optimizer, impl in OPTIMIZERS:
            settings = settings_for_preset("writeup", optimizer=optimizer, lbfgs_impl=impl,
                                           precision=precision, iterations=run_iterations, seed=0)
            losses = []
            run = stylize(network, c, [style], settings, lambda p: losses.append(p.total_loss) or True)
            stable.append({"precision": precision, "optimizer": optimizer, "lbfgs_impl": impl,
                           "status": run.status, "first_loss": losses[0], "lowest_loss": min(losses),
                           "stable": run.status == "done" and bool(np.isfinite(losses).all())})
            print(f"  gpu {stable[-1]}", file=sys.stderr)
    result["short_runs"] = stable
    result["steps"] = step_times(network, content, style, [step_size], list(dict.fromkeys(["float32", auto])),
                                 repeats)
    adam = {r["precision"]: r["seconds"] for r in result["steps"] if r["optimizer"] == "adam"}
    result["auto_speedup"] = adam["float32"] / adam[auto]
    result["fast"] = []  # per size, from the command to the image, while the budget lasts
    for size in fast_sizes:
        if time.perf_counter() > start + budget:
            result["fast"].append({"size": size, "skipped": "past the time budget"})
        else:
            result["fast"].append(fast_command(network, network_path, content_path, style_path, size, repeats,
                                               fast_options))
        print(f"  gpu {result['fast'][-1]}", file=sys.stderr)
    result["seconds"] = time.perf_counter() - start
    return result


def fast_command(network, network_path, content_path, style_path, size, repeats, options=()):
    """`neural_style.py --preset fast` (with `options`) from the command to the saved image (a fresh
    process: start-up, calibration and compiling included), against the plain float32 step at that
    size, timed before and after it so that a change of the machine's load shows."""
    content = fit(images.load_image(content_path), size)
    style = fit(images.load_image(style_path), size)
    plain = plain_step(network, content, style, settings_for_preset("writeup"))
    before = _time(plain, repeats, warmup=2)["median"]
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(ROOT / "neural_style.py"), "--preset", "fast", "--content", str(content_path),
                   "--style", str(style_path), "--network", str(network_path), "--max-size", str(size),
                   "--output", str(Path(folder) / "fast.png"), "--seed", "0", *options]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        return {"size": size, "error": done.stderr.strip()[-300:]}
    after = _time(plain, repeats, warmup=0)["median"]
    plain_seconds = (before + after) / 2
    return {"size": size, "image": f"{content.shape[1]}x{content.shape[0]}", "seconds": round(seconds, 1),
            "plain_step_seconds": [before, after],
            "plain_steps": round(seconds / plain_seconds, 1)}


# ---- memory: each run in a fresh process, so that its peak is its own -----------------------

def memory(network_path, args, sizes):
    rows = []
    for size in sizes:
        for preset in ("writeup", "fast"):
            command = [sys.executable, str(Path(__file__)), "--probe", f"{preset}:{size}",
                       "--network", str(network_path), "--content", str(args.content),
                       "--style", str(args.style)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"size": size, "preset": preset, "error": done.stderr.strip()[-300:]})
            else:
                rows.append({"size": size, "preset": preset, **json.loads(done.stdout.splitlines()[-1])})
            print(f"  memory {rows[-1]}", file=sys.stderr)
    return rows


def probe(args):
    """Two iterations of a preset at one size; prints the process's peak resident memory."""
    from stylize import stylize
    preset, size = args.probe.split(":")
    settings = dataclasses.replace(settings_for_preset(preset), iterations=2, scales=((1.0, None),))
    content = images.fit_long_side(images.load_image(args.content), int(size))
    style = images.load_image(args.style)
    start = time.perf_counter()
    stylize(vgg.load(args.network), content, [style], settings)
    peak_kb = peak_rss_kb()
    print(json.dumps({"peak_rss_gb": round(peak_kb / 2 ** 20, 3), "seconds": round(time.perf_counter() - start, 1),
                      "image": f"{content.shape[1]}x{content.shape[0]}"}))
    return 0


def peak_rss_kb():
    """This process's peak resident memory. Linux's ru_maxrss carries the parent's peak over a
    fork and exec (a probe started by a benchmark that had run at 512 px reported the parent's
    1.63 GB for its own 1.25 GB), so read the peak of this program's own memory map, VmHWM."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # macOS counts bytes


# ---- time to quality ------------------------------------------------------------------------

def time_to_quality(network, content, style, size, reference_iterations):
    """Wall time of the write-up's optimiser for `reference_iterations`, against the fast preset's
    time to reach the same float32 objective at the same size.

    The objective is the one `fast` optimises: the write-up's weights with beta calibrated on the
    network (--balance auto). The write-up's own, uncalibrated objective would measure how near
    `fast` comes to a balance it does not aim at (on VGG16 a 400x weaker style), so the reference
    is the write-up's recipe (Adam, lr 2.0, float32, one scale, blend start) on the calibrated one."""
    from stylize import Objective, stylize
    from vgg import VGG
    content = fit(content, size)
    reference = dataclasses.replace(settings_for_preset("writeup"), iterations=reference_iterations, seed=0,
                                    balance="auto")
    trace = []
    result = stylize(network, content, [style], reference,
                     lambda p: trace.append((p.seconds, p.total_loss)) or True)
    target_seconds, target_loss = trace[-1]
    # Evaluate any image in float32 at full size with that objective.
    layers = list(reference.content_layers) + list(reference.style_layers)
    full = Objective(VGG(network, layers, pooling=reference.pooling), content,
                     [fit(style, max(content.shape[:2]))], [1.0], reference, balance=result.balance)
    evaluate = lambda image: float(full.total(full.terms(image[np.newaxis])))
    target_loss = evaluate(result.image)

    # fast's recipe with its full-size scale run on, up to the reference's own count, until it
    # reaches the target: its default 60 evaluations stop at a finished picture, not at the target.
    fast = dataclasses.replace(settings_for_preset("fast"), seed=0, iterations=reference_iterations)
    fast_iterations = fast.total_iterations()
    candidates = []  # (seconds, iteration, image) at full size whose own loss is near the target

    def watch(p):
        if p.total_loss <= 1.05 * target_loss:
            image = p.image()
            if image.shape == content.shape:
                candidates.append((p.seconds, p.iteration, image.copy()))
        return not candidates or p.total_loss > 0.97 * target_loss
    stylize(network, content, [style], fast, watch)
    reached, reached_at = next(((seconds, iteration) for seconds, iteration, image in candidates
                                if evaluate(image) <= target_loss), (None, None))
    return {"size": f"{content.shape[1]}x{content.shape[0]}", "target_loss": target_loss,
            "reference_seconds": target_seconds, "reference_iterations": reference_iterations,
            "fast_seconds": reached, "fast_iteration": reached_at, "fast_recipe": describe(fast),
            "fast_iterations_max": fast_iterations,
            "speedup": (target_seconds / reached) if reached else None}


def describe(settings):
    scales = ",".join(f"{f:g}:{n or settings.iterations}" for f, n in settings.scales)
    return f"{settings.optimizer}, precision {settings.precision}, scales {scales}"


# ---- start-up -------------------------------------------------------------------------------

def startup(network_path, args):
    """Seconds from launching neural_style.py to its first progress record (iteration 0)."""
    with tempfile.TemporaryDirectory() as folder:
        log, out = Path(folder) / "progress.jsonl", Path(folder) / "out.png"
        command = [sys.executable, str(ROOT / "neural_style.py"), "--content", str(args.content),
                   "--style", str(args.style), "--output", str(out), "--network", str(network_path),
                   "--iterations", "1000", "--progress-file", str(log)]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not (log.exists() and log.read_text().strip()) and process.poll() is None:
                time.sleep(0.05)
            seconds = time.perf_counter() - start
        finally:
            process.kill()
            process.wait()
    size_mb = network_path.stat().st_size / 2 ** 20
    return {"seconds": round(seconds, 2), "network_mb": round(size_mb)}


# ---- fast style transfer ----------------------------------------------------------------------

def feedforward_speed(network, precisions, quick):
    """Seconds to stylize a 512x512 image with Johnson's network (per precision), and training steps
    per second at 256 px, batch 4, with `network` as the loss network."""
    from transformer import JOHNSON_WIDTHS
    size, widths, steps = (64, (8, 8, 8), 2) if quick else (512, JOHNSON_WIDTHS, 5)
    rows = [{"what": f"stylize {size}x{size}", "precision": precision,
             **benchmark_stylize(size, precision=precision, widths=widths,
                                 repeats=3 if quick else 10)}
            for precision in precisions]
    training = benchmark_training(network, image_size=size // 2, batch_size=4, steps=steps, widths=widths)
    rows.append({"what": f"training steps/s at {size // 2} px, batch 4", "precision": "float32", **training})
    for row in rows:
        print(f"  feedforward {row}", file=sys.stderr)
    return rows


def benchmark_stylize(size=512, precision="float32", jit_compile=False, widths=None,
                      variant="improved", repeats=10, warmup=3):
    """Seconds to stylize one size x size image (untrained weights time the same): median and best
    of `repeats` calls after `warmup` calls."""
    from transformer import JOHNSON_WIDTHS, TransformNet
    net = TransformNet(widths or JOHNSON_WIDTHS, variant, dtype=precision)
    any_size = tf.TensorSpec([None, None, None, 3], tf.float32)  # as the SavedModel that `stylize` runs
    run = tf.function(lambda batch: net(batch), input_signature=[any_size], jit_compile=jit_compile)
    batch = tf.random.uniform([1, size, size, 3], 0, 255, seed=0)
    return _time(lambda: run(batch).numpy(), repeats, warmup)


def benchmark_training(network, image_size=256, batch_size=4, steps=5, warmup=2, variant="improved",
                       widths=None, devices=None):
    """Training steps per second (median and best of `steps`) on random images with the default
    layers of `network` (a vgg.Network)."""
    import fast_train
    from transformer import JOHNSON_WIDTHS
    widths = widths or JOHNSON_WIDTHS
    settings = fast_train.Settings(style="", data="", network=network.path, variant=variant,
                                   widths=widths, image_size=image_size,
                                   batch_size=batch_size).with_defaults(network)
    rng = np.random.default_rng(0)
    style = rng.uniform(0, 255, (image_size, image_size, 3)).astype(np.float32)
    strategy = fast_train.choose_strategy(devices)
    training = fast_train.Training(network, style, settings, strategy)
    crops = tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3)), tf.float32)
    data = tf.data.Dataset.from_tensors((crops, tf.zeros([batch_size], tf.int64))).repeat()
    batches = iter(strategy.experimental_distribute_dataset(data))
    seconds = _time(lambda: float(training.train_step(next(batches))[1]), steps, warmup)
    return {"steps_per_second": 1 / seconds["median"], "best_steps_per_second": 1 / seconds["best"]}


def _time(call, repeats, warmup):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"median": float(np.median(times)), "best": min(times)}


def _optimizer(row):
    return row["optimizer"] + (f" ({row['lbfgs_impl']})" if row["lbfgs_impl"] else "")


def steps_table(rows):
    """Seconds per step, a row per size and precision, a column per optimizer; with a plain step
    (plain_step) at that size, the issue's ratios: Adam over the plain float32 step, L-BFGS over Adam."""
    keyed = {(r["size"], r["precision"], r["optimizer"], r["lbfgs_impl"]): r["seconds"] for r in rows}
    lines = ["", "| size | precision | Adam step (s) | L-BFGS evaluation, scipy (s) | L-BFGS evaluation, tf (s) "
                 "| Adam / plain float32 step | L-BFGS tf / Adam |", "|---|---|---|---|---|---|---|"]
    for size, precision in dict.fromkeys((r["size"], r["precision"]) for r in rows if r["optimizer"] != "plain"):
        adam, plain = keyed[(size, precision, "adam", None)], keyed.get((size, "float32", "plain", None))
        lines.append(f"| {size} | {precision} | " + " | ".join(
            f"{keyed[(size, precision, optimizer, impl)]:.3f}" for optimizer, impl in OPTIMIZERS)
            + f" | {f'{adam / plain:.2f}' if plain else '-'} | {keyed[(size, precision, 'lbfgs', 'tf')] / adam:.2f} |")
    lines += [f"plain TF2 float32 step (benchmark.plain_step) at {r['size']}: {r['seconds']:.3f} s"
              for r in rows if r["optimizer"] == "plain"]
    return lines


def table(results):
    lines = [f"machine: {results['machine']}", f"network: {results['network']}"]
    if "gpu" in results:
        g = results["gpu"]
        lines += ["", f"GPU check ({g['seconds']:.0f} s): {', '.join(g['gpus'])}, compute capability "
                      f"{g['compute_capability']}; --precision auto picks {g['auto_precision']}, "
                      f"{g['auto_speedup']:.2f}x float32's Adam step",
                  "", "| precision | optimizer | status | first loss | lowest loss | finite |", "|---|---|---|---|---|---|"]
        for r in g["short_runs"]:
            lines.append(f"| {r['precision']} | {_optimizer(r)} | {r['status']} | {r['first_loss']:.4g} | "
                         f"{r['lowest_loss']:.4g} | {'yes' if r['stable'] else 'NO'} |")
        lines += steps_table(g["steps"])
        lines += ["", "| fast preset, long side | image | command to image (s) | plain float32 steps |",
                  "|---|---|---|---|"]
        for r in g["fast"]:
            if "seconds" in r:
                lines.append(f"| {r['size']} | {r['image']} | {r['seconds']} | {r['plain_steps']} |")
            else:
                lines.append(f"| {r['size']} | - | {r.get('skipped') or r['error']} | - |")
    if "steps" in results:
        lines += steps_table(results["steps"])
    if "paired" in results:
        lines += ["", "| size | precision | rounds | plain float32 step (s) | Adam step (s) | L-BFGS evaluation, tf (s) "
                      "| Adam / plain float32 step | L-BFGS / Adam |", "|---|---|---|---|---|---|---|---|"]
        for r in results["paired"]:
            lines.append(f"| {r['size']} | {r['precision']} | {r['rounds']} | {r['plain_seconds']:.3f} | "
                         f"{r['adam_seconds']:.3f} | {r['lbfgs_seconds']:.3f} | {r['adam_over_plain']:.3f} | "
                         f"{r['lbfgs_over_adam']:.3f} |")
    if "fast" in results:
        f = results["fast"]
        lines += ["", f"fast preset at {f['size']} px, command to saved image: " + (
            f"{f['seconds']} s = {f['plain_steps']} plain float32 steps ({f['image']}; plain step "
            f"{f['plain_step_seconds'][0]:.3f} s before, {f['plain_step_seconds'][1]:.3f} s after)"
            if "seconds" in f else f"failed: {f['error']}")]
    if "memory" in results:
        lines += ["", "| long side | preset | image | peak RSS (GB) | seconds |", "|---|---|---|---|---|"]
        for r in results["memory"]:
            lines.append(f"| {r['size']} | {r['preset']} | {r.get('image', '-')} | "
                         f"{r.get('peak_rss_gb', r.get('error', '?'))} | {r.get('seconds', '-')} |")
    if "quality" in results:
        q = results["quality"]
        fast = (f"{q['fast_seconds']:.1f} s (iteration {q['fast_iteration']})" if q["fast_seconds"]
                else f"not reached in {q['fast_iterations_max']} iterations")
        speedup = f"{q['speedup']:.1f}x" if q["speedup"] else "-"
        lines += ["", f"time to quality at {q['size']}: write-up recipe {q['reference_iterations']} "
                      f"iterations {q['reference_seconds']:.1f} s (objective {q['target_loss']:.4g}); "
                      f"fast preset's recipe ({q['fast_recipe']}) {fast}; ratio {speedup}"]
    if "feedforward" in results:
        lines += ["", "| fast style transfer | precision | median | best |", "|---|---|---|---|"]
        for r in results["feedforward"]:
            if "median" in r:
                lines.append(f"| {r['what']} (s) | {r['precision']} | {r['median']:.3f} | {r['best']:.3f} |")
            else:
                lines.append(f"| {r['what']} | {r['precision']} | {r['steps_per_second']:.3f} | "
                             f"{r['best_steps_per_second']:.3f} |")
    if "startup" in results:
        s = results["startup"]
        lines += ["", f"start-up to the first iteration with a {s['network_mb']} MB .mat: {s['seconds']} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(cli.entry(main))
