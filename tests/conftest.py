"""Shared fixtures: tiny networks with the real VGG19 layer names and layout, and small images."""
import contextlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import vgg

TINY_WIDTHS = (4, 4, 8, 8, 8)  # channels per block: the real layout, few channels
TINY_CLASSIFIER = (16, 10)


def write_tiny(path, layout="new", blocks=vgg.VGG19_BLOCKS, seed=0):
    return vgg.write_random(path, blocks=blocks, widths=TINY_WIDTHS, classifier=TINY_CLASSIFIER,
                            layout=layout, seed=seed)


@pytest.fixture(scope="session")
def tiny_mat(tmp_path_factory):
    """A VGG19-shaped .mat (current layout) with a few channels per layer."""
    return write_tiny(tmp_path_factory.mktemp("net") / "tiny-vgg19.mat")


@pytest.fixture(scope="session")
def tiny_network(tiny_mat):
    return vgg.load(tiny_mat)


@pytest.fixture(scope="session")
def tiny16(tmp_path_factory):
    """A VGG16-shaped network (the paper's layers for fast style transfer) with a few channels."""
    return write_tiny(tmp_path_factory.mktemp("net16") / "tiny-vgg16.mat", blocks=vgg.VGG16_BLOCKS)


def smooth_image(height, width, seed=0):
    """A photo-like test image: smooth colour gradients plus a few shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 5 + y / 7)], axis=-1)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1, max(2, height / 3))
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.float32)


def stripes_image(height, width, period=6):
    """A style-like test image: diagonal coloured stripes."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (x + y) / period
    return np.stack([127 + 120 * np.sin(phase), 127 + 120 * np.cos(phase * 1.3), 60 + 50 * np.sin(x / 3)],
                    axis=-1).astype(np.float32)



# The two style images of the perceptual-control and figure tests: stripes, and a smooth other one.
STYLE_A, STYLE_B = stripes_image(36, 36), smooth_image(36, 36, seed=7)

@pytest.fixture
def image_files(tmp_path):
    """A content photo and a style image on disk."""
    import images
    content = images.save_image(tmp_path / "content.png", smooth_image(40, 48))
    style = images.save_image(tmp_path / "style.png", stripes_image(44, 44))
    return content, style


@pytest.fixture(scope="session")
def real_network_path():
    path = os.environ.get("NST_TEST_NETWORK")
    if not path or not Path(path).is_file():
        pytest.skip("NST_TEST_NETWORK does not name a .mat file")
    return Path(path)


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves the server's `body` at /file; honours `Range: bytes=N-` unless the server says not to."""

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if self.path != "/file":
            self.send_error(404)
            return
        body, start = server.body, 0
        wanted = self.headers.get("Range")
        if wanted and server.ranges:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        rest = body[start:]
        # A broken server sends half of what it promised, then closes (HTTP/1.0 closes after each).
        self.wfile.write(rest[:len(rest) // 2] if server.cut else rest)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(ranges=True, cut=False, body=BODY) -> (url of /file, list of the Range headers
    received): a file server on 127.0.0.1 for the download tests."""
    servers = []

    def start(ranges=True, cut=False, body=b""):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.body, server.ranges, server.cut, server.requests = body, ranges, cut, []
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/file", server.requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ---- fast_style.py: tiny data, a tiny training, the command line (test_fast_style, _fast_train, _fast_apply) ----

FAST_STYLE_TINY = ["--widths", "8,8,8", "--image-size", "32", "--batch-size", "4"]


def fast_style_cli(*args):
    import fast_style  # here: conftest is loaded by every test file
    return fast_style.main([str(a) for a in args])


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """A data folder (five images, one in a subfolder, one unreadable file) and a style image."""
    import images
    root = tmp_path_factory.mktemp("inputs")
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    for i in range(4):
        images.save_image(data / f"photo{i}.png", smooth_image(40 + 4 * i, 48, seed=i))
    images.save_image(data / "sub" / "deep.jpg", smooth_image(36, 52, seed=7))
    (data / "broken.jpg").write_text("not an image")
    style = images.save_image(root / "style.png", stripes_image(48, 48))
    return data, style


def train_args(inputs, network, model, steps, *extra):
    data, style = inputs
    return ["train", "--style", style, "--data", data, "--network", network, "--model", model,
            "--steps", steps, *FAST_STYLE_TINY, *extra]


@pytest.fixture(scope="session")
def trained(inputs, tiny16, tmp_path_factory):
    """A model folder after 4 steps (checkpoints every 2), exported."""
    model = tmp_path_factory.mktemp("trained") / "model"
    assert fast_style_cli(*train_args(inputs, tiny16, model, 4, "--checkpoint-every", 2, "--preview-every", 2)) == 0
    return model


def assert_exports_match(model, image):
    """The model folder's SavedModel and TFLite compute what its checkpoint's network computes."""
    import fast_apply
    from quiet_tf import tf
    expected = fast_apply.restore_network(model)(tf.constant(image)).numpy()
    served = tf.saved_model.load(str(model / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(served(images=tf.constant(image))["stylized"].numpy(), expected, atol=0.01)
    interpreter = tf.lite.Interpreter(str(model / "model.tflite"))
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], image.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], image)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]),
                               expected, atol=0.05)  # of 0..255


@contextlib.contextmanager
def stop_after(checks):
    """graceful_interrupt whose request turns true at its (checks + 1)-th look: a Ctrl-C after
    `checks` steps, as the training loop asks before every step."""
    class Request:
        looks = 0

        def __bool__(self):
            self.looks += 1
            return self.looks > checks

    yield Request()


@pytest.fixture
def no_export(monkeypatch):
    """Training without the final export (SavedModel and TFLite), for tests that only look at the
    checkpoints: the conversion takes seconds."""
    import fast_apply
    monkeypatch.setattr(fast_apply, "export", lambda model_dir: None)
