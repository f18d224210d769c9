"""A local web studio: pick images, watch the picture form, compare settings side by side.

    python studio.py                 # prints the URL of the page, e.g. http://127.0.0.1:8765/

A run is a neural_style.py command line: the page's fields become its options, parsed and checked by
the same parser and stylize() does the work, so the studio accepts exactly what the command line
accepts. One worker thread runs one run at a time; the others queue. Every run lives in its own
folder under --runs (result, settings, losses, loss curve, status), so a restart keeps them all.
Trained feed-forward models in --models stylize an upload or a webcam frame in one pass.
See docs/studio.md.
"""
import argparse
import asyncio
import collections
import dataclasses
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import files
from errors import UserError

ROOT = Path(__file__).resolve().parent
STATIC = ROOT / "static"
EXAMPLES = ROOT / "examples"
DEFAULT_PORT = 8765  # the first port tried; the next free one is taken when it is busy
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
UPLOAD_ID = re.compile(r"u[0-9a-f]{16}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# The files of a run the page may fetch, by name; nothing else in a run folder is served.
RUN_FILES = {"result.png": "image/png", "current.png": "image/png", "losses.png": "image/png",
             "settings.json": "application/json", "losses.jsonl": "application/x-ndjson"}
FINISHED = ("done", "interrupted", "diverged", "failed", "cancelled")
# The page's fields and the neural_style.py option each one sets; a field left empty keeps the
# preset's value. Paths (--network, --init-image, --style-mask, --output, ...) are the server's own.
FIELDS = {
    "preset": "--preset", "max_size": "--max-size", "iterations": "--iterations",
    "content_weight": "--content-weight", "style_weight": "--style-weight", "tv_weight": "--tv-weight",
    "color_control": "--color-control", "optimizer": "--optimizer", "learning_rate": "--learning-rate",
    "init": "--init", "noise_ratio": "--noise-ratio", "seed": "--seed", "pooling": "--pooling",
    "content_layers": "--content-layers", "style_layers": "--style-layers", "style_scale": "--style-scale",
    "scales": "--scales", "precision": "--precision",
}
LIST_FIELDS = {"style_blend_weights": "--style-blend-weights"}  # one number per style image
FLAG_FIELDS = {"normalize_network": "--normalize-network"}  # true / false
MAX_STYLES = 8
# Pillow's format names and the extension an upload is kept under (the loader reads the content).
UPLOAD_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                   "WEBP": ".webp", "MPO": ".jpg"}


def _read_json(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def plot_losses(records, path):
    """The loss curve of a run as a PNG: the three terms (before their weights) and the total."""
    import plots
    names = (("total_loss", "total"), ("content_loss", "content"), ("style_loss", "style"),
             ("tv_loss", "total variation"))
    plots.try_save_loss_plot(path, [record["iteration"] for record in records],
                             {label: [record[key] for record in records] for key, label in names},
                             "loss terms (before their weights; total after)")


def run_options(fields):
    """The neural_style.py options for the page's `fields`, each as one `--option=value` argument
    (a value can never be read as another option)."""
    if not isinstance(fields, dict):
        raise UserError("settings must be an object of field names and values")
    options = []
    for name, value in fields.items():
        if value is None or value == "":
            continue
        if name in FIELDS:
            if isinstance(value, (dict, list, bool)):
                raise UserError(f"{name} takes one value, not {json.dumps(value)}")
            options.append(f"{FIELDS[name]}={value}")
        elif name in FLAG_FIELDS:
            if not isinstance(value, bool):
                raise UserError(f"{name} is true or false, not {json.dumps(value)}")
            options.append(FLAG_FIELDS[name] if value else FLAG_FIELDS[name].replace("--", "--no-", 1))
        elif name in LIST_FIELDS:
            values = value if isinstance(value, list) else str(value).replace(",", " ").split()
            try:
                numbers = [float(item) for item in values]
            except (TypeError, ValueError):
                raise UserError(f"{name} takes numbers, one per style image, not {json.dumps(value)}") from None
            if numbers:
                options += [LIST_FIELDS[name], *map(repr, numbers)]
        else:
            raise UserError(f"the studio has no setting '{name}'")
    return options


def command(inputs, options):
    """The neural_style.py command line of a run, with its folder's file names (run inside it)."""
    styles = [item["file"] for item in inputs["styles"]]
    return ["python", "neural_style.py", "--content", inputs["content"]["file"], "--style", *styles,
            "--output", "result.png", *options]


def parse_run(folder, inputs, options):
    """neural_style.py's arguments and settings for a run whose images are in `folder`, parsed as
    the command line parses them; a UserError holds the message it would print."""
    import neural_style
    parser = neural_style.build_parser()

    def fail(status=0, message=""):
        raise UserError(message.strip().removeprefix(f"{parser.prog}: error: "))

    # The command line prints its usage and the message, and exits; the page shows the message.
    parser.print_usage, parser.exit = lambda file=None: None, fail
    args = parser.parse_args(_in_folder(folder, command(inputs, options)[2:]))
    settings, max_size = neural_style.settings_from(args)
    return args, settings, max_size


def load_run_inputs(args, settings, max_size):
    """The content and styles as neural_style.py loads them, checked as it checks them before it
    loads the network."""
    import neural_style
    import stylize
    content, styles = neural_style.load_inputs(args, max_size)
    stylize.check_inputs(settings, content, styles)
    return content, styles


def _in_folder(folder, argv):
    """A command's image paths inside the run's folder."""
    paths, result = False, []
    for item in argv:
        if item.startswith("--"):
            paths = item in ("--content", "--style", "--output")
            result.append(item)
        else:
            result.append(str(folder / item) if paths else item)
    return result


class Run:
    """One run: its folder and, while the studio runs it, its live state."""

    def __init__(self, folder, status):
        self.folder, self.id = folder, folder.name
        self.status = status  # as in status.json: state, times, iteration, total, image, error
        self.records = None  # the loss records, kept in memory while it runs
        self.stop = threading.Event()
        self._saved = None

    def saved(self):
        """settings.json: what the run was asked to do (written once, when it was queued)."""
        if self._saved is None:
            self._saved = _read_json(self.folder / "settings.json", {})
        return self._saved

    def save_status(self, **changes):
        self.status.update(changes)
        files.write_json(self.folder / "status.json", self.status)

    def loss_records(self):
        if self.records is not None:
            return self.records
        try:
            lines = (self.folder / "losses.jsonl").read_text().splitlines()
        except OSError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short when the server was killed
                break
        return records


class RunMonitor:
    """The studio's monitor for stylize(), as neural_style.Monitor is the terminal's: records the
    losses, keeps the live state for the page, snapshots the current image every few seconds, and
    asks the run to stop when the page says so."""

    def __init__(self, studio, run, snapshot_seconds):
        self.studio, self.run, self.snapshot_seconds = studio, run, snapshot_seconds
        self.log = open(run.folder / "losses.jsonl", "w", buffering=1)
        self.start, self.last_snapshot = None, None

    def __call__(self, state):
        import images
        import progress
        if self.start is None:
            self.start = time.perf_counter() - state.seconds
        record = state.as_record()
        self.log.write(json.dumps(record) + "\n")
        elapsed, left = progress.eta(self.start, state.done, 1.0)  # coarse to fine: shares of pixels
        now = time.monotonic()
        snapshot = self.last_snapshot is None or now - self.last_snapshot >= self.snapshot_seconds
        if snapshot:
            images.save_image(self.run.folder / "current.png", state.image())
            self.last_snapshot = now
        with self.studio.changed:
            self.run.records.append(record)
            self.run.status.update(iteration=state.iteration, total=state.total_iterations,
                                   elapsed=elapsed, eta=left if left == left else None,
                                   losses={key: record[key] for key in
                                           ("content_loss", "style_loss", "tv_loss", "total_loss")})
            if snapshot:
                self.run.status.update(image="current.png", image_version=state.iteration)
                self.run.save_status()
            self.studio.changed.notify_all()
        return not self.run.stop.is_set()

    def close(self):
        self.log.close()


class Studio:
    """The runs on disk, the queue and the one worker thread; the web app is a view of it."""

    def __init__(self, runs_dir, models_dir, network=None, snapshot_seconds=3.0,
                 max_upload_bytes=40 << 20, max_pixels=30_000_000):
        self.runs_dir, self.models_dir = Path(runs_dir), Path(models_dir)
        self.uploads_dir = self.runs_dir / "uploads"
        self.network_path = Path(network) if network else None
        self.snapshot_seconds = snapshot_seconds
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.changed = threading.Condition()  # guards runs, queue and live state; notified on change
        self.runs, self.queue, self.current = {}, collections.deque(), None
        self.closing = False
        self.worker = None
        self._network = None
        self._stylizers, self._stylizer_lock = {}, threading.Lock()

    # --- life cycle ---------------------------------------------------------------------------

    def open(self):
        """Read the runs on disk and start the worker. A run that was running when the server
        stopped is interrupted (its last snapshot is its image); queued runs queue again."""
        from quiet_tf import tf
        tf.constant(0.0)  # TensorFlow loads now, not in the first request (6 s on a loaded machine)
        try:
            self.uploads_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the runs folder {self.runs_dir}: {error.strerror}") from None
        for folder in sorted(self.runs_dir.iterdir()):
            status = _read_json(folder / "status.json") if RUN_ID.fullmatch(folder.name) else None
            if not isinstance(status, dict) or "state" not in status:
                continue
            run = Run(folder, status)
            if status["state"] == "running":
                run.save_status(state="interrupted", error="the studio stopped during the run",
                                image="current.png" if (folder / "current.png").is_file() else None)
            elif status["state"] == "queued":
                self.queue.append(run.id)
            self.runs[run.id] = run
        self.worker = threading.Thread(target=self._work, name="studio-worker", daemon=True)
        self.worker.start()

    def close(self, timeout=30.0):
        """Stop the current run (its image is kept, as Ctrl-C keeps it) and the worker."""
        with self.changed:
            self.closing = True
            if self.current is not None:
                self.current.stop.set()
            self.changed.notify_all()
        if self.worker is not None:
            self.worker.join(timeout)

    # --- images -------------------------------------------------------------------------------

    def examples(self):
        import images
        return {f"ex-{path.stem}": path for path in sorted(EXAMPLES.iterdir())
                if path.suffix.lower() in images.WRITABLE} if EXAMPLES.is_dir() else {}

    def image_path(self, image_id):
        """The file of an image id (an upload or an example), or None."""
        if isinstance(image_id, str) and UPLOAD_ID.fullmatch(image_id):
            meta = _read_json(self.uploads_dir / f"{image_id}.json")
            return self.uploads_dir / meta["file"] if isinstance(meta, dict) else None
        return self.examples().get(image_id) if isinstance(image_id, str) else None

    def image_name(self, image_id):
        if UPLOAD_ID.fullmatch(image_id):
            return _read_json(self.uploads_dir / f"{image_id}.json")["name"]
        return self.examples()[image_id].name

    def images(self):
        """The examples and the uploads, for the page's pickers."""
        listed = [{"id": key, "name": path.name, "example": True} for key, path in self.examples().items()]
        metas = [_read_json(path) for path in sorted(self.uploads_dir.glob("u*.json"),
                                                      key=lambda path: path.stat().st_mtime)]
        listed += [{"id": meta["id"], "name": meta["name"], "example": False}
                   for meta in metas if isinstance(meta, dict)]
        return listed

    def check_image(self, path, name):
        """An image file as the command line reads it; the UserError names `name`, not the path."""
        import images
        from PIL import Image
        try:
            with Image.open(path) as image:  # reads the header only: refuse a huge image before decoding it
                width, height = image.size
                kind = image.format
        except Exception:
            width = height = kind = None  # not an image: the loader says so in its words
        if width and width * height > self.max_pixels:
            raise UserError(f"{name} is {width}x{height} px, more than the studio's limit of "
                            f"{self.max_pixels / 1e6:g} megapixels; scale it down first")
        try:
            array = images.load_image(path, "image")
        except UserError as error:
            raise UserError(str(error).replace(str(path), name)) from None
        return array, kind

    def add_upload(self, data, name):
        """Keep an uploaded image (validated) under a new id; returns its listing."""
        name = _display_name(name)
        upload_id = "u" + secrets.token_hex(8)
        with tempfile.TemporaryDirectory(dir=self.uploads_dir) as scratch:
            path = Path(scratch) / "upload"
            path.write_bytes(data)
            array, kind = self.check_image(path, name)
            final = self.uploads_dir / f"{upload_id}{UPLOAD_SUFFIXES.get(kind, '.img')}"
            os.replace(path, final)
        meta = {"id": upload_id, "name": name, "file": final.name,
                "width": array.shape[1], "height": array.shape[0]}
        files.write_json(self.uploads_dir / f"{upload_id}.json", meta)
        return {"id": upload_id, "name": name, "example": False, "width": meta["width"],
                "height": meta["height"]}

    # --- runs ---------------------------------------------------------------------------------

    def submit(self, request):
        """Queue a run from the page's request {content, styles, settings}; a UserError says why not."""
        if not isinstance(request, dict):
            raise UserError("a run needs a content image, style images and settings")
        content, styles = request.get("content"), request.get("styles")
        if not isinstance(styles, list) or not styles:
            raise UserError("choose at least one style image")
        if len(styles) > MAX_STYLES:
            raise UserError(f"choose at most {MAX_STYLES} style images")
        sources = []
        for what, image_id in [("content image", content)] + [("style image", s) for s in styles]:
            path = self.image_path(image_id)
            if path is None or not path.is_file():
                raise UserError(f"the {what} is not one of the studio's images; upload it again")
            sources.append((path, self.image_name(image_id)))
        inputs = {"content": {"name": sources[0][1], "file": "content" + sources[0][0].suffix.lower()},
                  "styles": [{"name": name, "file": f"style{i}{path.suffix.lower()}"}
                             for i, (path, name) in enumerate(sources[1:], 1)]}
        options = run_options(request.get("settings") or {})
        run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        folder = self.runs_dir / run_id
        args, settings, max_size = parse_run(folder, inputs, options)  # before anything is written
        sources_args = argparse.Namespace(**vars(args))
        sources_args.content, sources_args.style = sources[0][0], [path for path, _ in sources[1:]]
        load_run_inputs(sources_args, settings, max_size)
        folder.mkdir()
        for (path, _), item in zip(sources, [inputs["content"], *inputs["styles"]]):
            shutil.copyfile(path, folder / item["file"])
        network = self.network_path.name if self.network_path else "the default (weights/)"
        files.write_json(folder / "settings.json", {
            "id": run_id, "command": shlex.join(command(inputs, options)), "options": options,
            "inputs": inputs, "network": network, "max_size": max_size,
            "settings": dataclasses.asdict(settings)})
        run = Run(folder, {"state": "queued", "created": time.time()})
        run.save_status()
        with self.changed:
            self.runs[run_id] = run
            self.queue.append(run_id)
            self.changed.notify_all()
        return self.summary(run)

    def stop(self, run_id):
        """Stop a running run (keeping its current image) or take a queued one off the queue."""
        with self.changed:
            run = self.runs[run_id]
            if run_id in self.queue:
                self.queue.remove(run_id)
                run.save_status(state="cancelled", finished=time.time())
            elif run.status["state"] == "running":
                run.stop.set()
            self.changed.notify_all()
        return self.summary(run)

    def delete(self, run_id):
        with self.changed:
            run = self.runs[run_id]
            if run.status["state"] not in FINISHED:
                raise UserError("stop the run before deleting it")
            del self.runs[run_id]
        shutil.rmtree(run.folder)

    def summary(self, run):
        """What the page shows of a run: its status, its place in the queue and its inputs."""
        with self.changed:
            status = dict(run.status)
            place = self.queue.index(run.id) + 1 if run.id in self.queue else None
        saved = run.saved()
        inputs = saved.get("inputs", {})
        return {"id": run.id, **status, "place": place, "command": saved.get("command"),
                "content": inputs.get("content", {}).get("name"),
                "styles": [item.get("name") for item in inputs.get("styles", [])],
                "preset": _option(saved.get("options", []), "--preset") or "writeup",
                "files": [name for name in RUN_FILES if (run.folder / name).is_file()]}

    def summaries(self):
        with self.changed:
            runs = sorted(self.runs.values(), key=lambda run: run.id, reverse=True)
        return [self.summary(run) for run in runs]

    def live(self, run_id, since):
        """(summary, the loss records from index `since` on) for the page's live view."""
        run = self.runs[run_id]
        with self.changed:
            records = run.loss_records()[since:]
        return self.summary(run), records

    def compare(self, run_ids):
        """Runs' effective settings side by side, and the names of those that differ."""
        rows = []
        for run_id in run_ids:
            saved = self.runs[run_id].saved()
            values = {"content": saved.get("inputs", {}).get("content", {}).get("name"),
                      "styles": [item["name"] for item in saved.get("inputs", {}).get("styles", [])],
                      "max_size": saved.get("max_size"), "network": saved.get("network"),
                      **saved.get("settings", {})}
            rows.append({"id": run_id, "values": values, "command": saved.get("command")})
        keys = list(dict.fromkeys(key for row in rows for key in row["values"]))
        differ = [key for key in keys if len({json.dumps(row["values"].get(key), sort_keys=True)
                                              for row in rows}) > 1]
        return {"keys": keys, "differ": differ, "runs": rows}

    # --- the worker ---------------------------------------------------------------------------

    def _work(self):
        while True:
            with self.changed:
                while not self.queue and not self.closing:
                    self.changed.wait()
                if self.closing:
                    return
                run = self.runs[self.queue.popleft()]
                self.current = run
                run.records = []
                run.save_status(state="running", started=time.time())
                self.changed.notify_all()
            try:
                outcome = self._execute(run)
            except UserError as error:
                outcome = {"state": "failed", "error": str(error)}
            except Exception as error:  # a fault of the studio: keep serving, show it, log it
                traceback.print_exc()
                outcome = {"state": "failed", "error": f"internal error: {type(error).__name__}: {error}"}
            with self.changed:
                if self.closing and outcome["state"] == "interrupted":
                    outcome["error"] = "the studio stopped during the run"
                run.save_status(finished=time.time(), **outcome)
                run.records, self.current = None, None
                self.changed.notify_all()

    def network(self):
        """The VGG network of every run, loaded once (the default is downloaded on first use)."""
        if self._network is None:
            import vgg
            self._network = vgg.load(self.network_path or vgg.ensure_default(progress=False))
        return self._network

    def _execute(self, run):
        import images
        from stylize import stylize
        saved = run.saved()
        args, settings, max_size = parse_run(run.folder, saved["inputs"], saved["options"])
        content, styles = load_run_inputs(args, settings, max_size)
        monitor = RunMonitor(self, run, self.snapshot_seconds)
        try:
            result = stylize(self.network(), content, styles, settings, monitor)
        finally:
            monitor.close()
        if result.image is None:
            raise UserError("the loss is not finite at the starting image, so there is nothing to keep; "
                            "lower the loss weights or the learning rate, or try precision float32")
        images.save_image(run.folder / "result.png", result.image)
        if run.records:
            plot_losses(run.records, run.folder / "losses.png")
        outcome = {"state": result.status, "iteration": result.iterations, "image": "result.png",
                   "image_version": result.iterations}
        if result.status == "diverged":
            outcome["error"] = (f"the loss stopped being finite after iteration {result.iterations}; "
                                f"the last finite image is kept. Lower the learning rate or the loss weights.")
        return outcome

    # --- feed-forward models ------------------------------------------------------------------

    def models(self):
        """The trained model folders in --models (those with an exported network)."""
        if not self.models_dir.is_dir():
            return []
        return [folder.name for folder in sorted(self.models_dir.iterdir())
                if MODEL_NAME.fullmatch(folder.name) and folder.is_dir() and
                ((folder / "saved_model.pb").is_file() or (folder / "saved_model" / "saved_model.pb").is_file())]

    def stylize_with_model(self, name, data, preserve_colors=False):
        """One pass of a trained network over an uploaded image or webcam frame; PNG bytes."""
        import fast_apply
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "frame"
            source.write_bytes(data)
            self.check_image(source, "the image")
            with self._stylizer_lock:  # one at a time: each pass uses every core
                if name not in self._stylizers:
                    self._stylizers[name] = fast_apply.Stylizer(self.models_dir / name)
                try:
                    output, failure = fast_apply.stylize_image(
                        self._stylizers[name], source, Path(scratch) / "out.png", overwrite=True,
                        preserve_colors=preserve_colors)
                except UserError as error:  # e.g. too small for the network: name no server path
                    raise UserError(str(error).replace(f"input image {source}", "the image")) from None
            if failure is not None:
                raise UserError(f"the stylized image could not be written ({failure})")
            return output.read_bytes()


def _option(options, name):
    for item in options:
        if item.startswith(name + "="):
            return item.split("=", 1)[1]
    return None


def _display_name(name):
    """A file name for display only (never a path on the server)."""
    name = Path(str(name or "image").replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable())[:80]
    return name or "image"


# --- the web app ------------------------------------------------------------------------------

class SameOrigin:
    """Refuses a request that changes something (POST, DELETE) when a page of another site sent
    it: a local server is otherwise open to every page the browser shows."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        from urllib.parse import urlsplit
        from starlette.responses import JSONResponse
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(scope["headers"])
            origin, host = headers.get(b"origin"), headers.get(b"host", b"")
            if origin is not None and urlsplit(origin.decode("latin-1")).netloc != host.decode("latin-1"):
                await JSONResponse({"error": "requests from other sites are refused"}, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(studio, allowed_hosts=("127.0.0.1", "localhost", "[::1]")):
    """The Starlette app over `studio`; `allowed_hosts` None accepts any Host header (--host)."""
    import contextlib
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    import presets

    async def body(request, limit):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise HTTPException(413, f"the upload is larger than the studio's limit of {limit / 2**20:g} MB")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"the upload is larger than the studio's limit of {limit / 2**20:g} MB")
            chunks.append(chunk)
        if not size:
            raise UserError("the upload is empty; choose an image file")
        return b"".join(chunks)

    async def json_body(request):
        try:
            return json.loads(await body(request, 1 << 16))
        except ValueError:
            raise UserError("the request is not JSON") from None

    def run_of(request):
        run_id = request.path_params["run_id"]
        if not RUN_ID.fullmatch(run_id) or run_id not in studio.runs:
            raise HTTPException(404, "no such run")
        return run_id

    async def index(request):
        return FileResponse(STATIC / "index.html")

    async def info(request):
        return JSONResponse(json.loads(json.dumps({
            "presets": presets.PRESETS, "fields": [*FIELDS, *LIST_FIELDS, *FLAG_FIELDS],
            "network": studio.network_path.name if studio.network_path else "default (weights/)",
            "max_upload_bytes": studio.max_upload_bytes, "max_pixels": studio.max_pixels,
            "snapshot_seconds": studio.snapshot_seconds}, default=list)))

    async def list_images(request):
        return JSONResponse(await run_in_threadpool(studio.images))

    async def get_image(request):
        path = studio.image_path(request.path_params["image_id"])
        if path is None or not path.is_file():
            raise HTTPException(404, "no such image")
        return FileResponse(path)

    async def upload(request):
        data = await body(request, studio.max_upload_bytes)
        return JSONResponse(await run_in_threadpool(studio.add_upload, data, request.query_params.get("name")))

    async def list_runs(request):
        return JSONResponse(await run_in_threadpool(studio.summaries))

    async def start_run(request):
        return JSONResponse(await run_in_threadpool(studio.submit, await json_body(request)), 201)

    async def get_run(request):
        return JSONResponse(studio.summary(studio.runs[run_of(request)]))

    async def stop_run(request):
        return JSONResponse(studio.stop(run_of(request)))

    async def delete_run(request):
        await run_in_threadpool(studio.delete, run_of(request))
        return Response(status_code=204)

    async def run_file(request):
        run_id, name = run_of(request), request.path_params["name"]
        path = studio.runs[run_id].folder / name
        if name not in RUN_FILES or not path.is_file():
            raise HTTPException(404, "no such file")
        attachment = request.query_params.get("download")
        return FileResponse(path, media_type=RUN_FILES[name], headers={"Cache-Control": "no-cache"},
                            filename=f"{run_id}-{name}" if attachment else None)

    async def events(request):
        """Server-sent events: the run's state and its new loss records, until it is finished."""
        run_id = run_of(request)

        async def stream():
            since, last = 0, None
            while True:
                try:
                    summary, records = studio.live(run_id, since)
                except KeyError:  # deleted
                    return
                since += len(records)
                state = json.dumps(summary)
                if records or state != last:
                    rows = [[r["iteration"], r["total_loss"], r["content_loss"], r["style_loss"], r["tv_loss"]]
                            for r in records]
                    yield f"event: progress\ndata: {json.dumps({**summary, 'records': rows})}\n\n"
                    last = state
                if summary["state"] in FINISHED:
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def compare(request):
        ids = [item for item in request.query_params.get("ids", "").split(",") if item]
        if len(ids) < 2 or any(not RUN_ID.fullmatch(i) or i not in studio.runs for i in ids):
            raise HTTPException(404, "compare needs two or more runs of the gallery")
        return JSONResponse(studio.compare(ids))

    async def list_models(request):
        return JSONResponse({"folder": studio.models_dir.name, "models": studio.models()})

    async def model_stylize(request):
        name = request.path_params["name"]
        if name not in studio.models():
            raise HTTPException(404, "no such model")
        data = await body(request, studio.max_upload_bytes)
        preserve = request.query_params.get("preserve_colors") in ("1", "true")
        png = await run_in_threadpool(studio.stylize_with_model, name, data, preserve)
        return Response(png, media_type="image/png")

    async def user_error(request, error):
        return JSONResponse({"error": str(error)}, 400)

    async def http_error(request, error):
        return JSONResponse({"error": error.detail}, error.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if studio.worker is None:
            studio.open()
        yield
        await run_in_threadpool(studio.close)

    routes = [
        Route("/", index), Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/info", info), Route("/api/images", list_images),
        Route("/api/images/{image_id}", get_image), Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/runs", list_runs), Route("/api/runs", start_run, methods=["POST"]),
        Route("/api/runs/{run_id}", get_run), Route("/api/runs/{run_id}", delete_run, methods=["DELETE"]),
        Route("/api/runs/{run_id}/events", events), Route("/api/runs/{run_id}/stop", stop_run, methods=["POST"]),
        Route("/api/runs/{run_id}/files/{name}", run_file), Route("/api/compare", compare),
        Route("/api/models", list_models), Route("/api/models/{name}/stylize", model_stylize, methods=["POST"]),
    ]
    middleware = [Middleware(SameOrigin)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={UserError: user_error, HTTPException: http_error})


# --- the command line -------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="studio.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default "
                        "127.0.0.1: this computer only; anything else exposes the studio, with no login)")
    parser.add_argument("--port", type=int, help=f"the port (default: {DEFAULT_PORT}, or the next free one)")
    parser.add_argument("--runs", type=Path, default=Path("studio-runs"),
                        help="the folder of the runs and uploads (default studio-runs/ here)")
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="the folder of trained fast_style.py model folders (default models/ here)")
    parser.add_argument("--network", type=Path, help="the MatConvNet VGG .mat file of every run (default "
                        "as neural_style.py: weights/imagenet-vgg-verydeep-19.mat, downloaded on first use)")
    parser.add_argument("--snapshot-seconds", type=float, default=3.0,
                        help="how often the current image of a run is saved and shown (default 3)")
    parser.add_argument("--max-upload-mb", type=float, default=40.0, help="largest upload (default 40 MB)")
    parser.add_argument("--max-megapixels", type=float, default=30.0,
                        help="largest uploaded image (default 30 megapixels)")
    return parser.parse_args(argv)


def listen(host, port):
    """A listening socket on `port`, or on the first free port from DEFAULT_PORT."""
    candidates = [port] if port is not None else range(DEFAULT_PORT, DEFAULT_PORT + 50)
    try:
        family = socket.getaddrinfo(host, None)[0][0]
    except socket.gaierror:
        raise UserError(f"--host {host} is not an address of this computer") from None
    for candidate in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
            sock.listen(128)
            return sock
        except OSError as error:
            sock.close()
            reason = error.strerror
    if port is not None:
        raise UserError(f"cannot listen on {host} port {port} ({reason}); choose another --port or "
                        f"leave it out for a free one")
    raise UserError(f"no free port from {DEFAULT_PORT} to {DEFAULT_PORT + 49}; give one with --port")


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(args):
    import math
    for value, option in ((args.snapshot_seconds, "--snapshot-seconds"), (args.max_upload_mb, "--max-upload-mb"),
                          (args.max_megapixels, "--max-megapixels")):
        if not math.isfinite(value) or value <= 0:
            raise UserError(f"{option} must be a positive number, not {value}")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {args.port}")
    if args.network is not None and not args.network.is_file():
        raise UserError(f"network {args.network} does not exist; give a VGG .mat file or leave --network out")
    import uvicorn
    studio = Studio(args.runs, args.models, args.network, args.snapshot_seconds,
                    int(args.max_upload_mb * 2**20), int(args.max_megapixels * 1e6))
    local = _is_loopback(args.host)
    sock = listen(args.host, args.port)
    studio.open()
    app = create_app(studio, allowed_hosts=("127.0.0.1", "localhost", "[::1]") if local else None)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"studio at http://{shown}:{port}/  (runs in {args.runs}/; Ctrl-C to stop)", flush=True)
    if not local:
        print(f"warning: --host {args.host} lets other computers reach the studio; anyone who can reach "
              f"it can upload images and start runs (there is no login)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return serve(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # uvicorn passes Ctrl-C on once it has shut the studio down
        print("studio stopped", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
