"""studio.py: its web API through Starlette's TestClient with a tiny network (runs, progress events,
stop, queue, history across restarts, comparison, feed-forward models, bad uploads, traversal), the
command line, and the page itself in a headless Chromium when one is installed."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import images
import studio
from presets import PRESETS
from conftest import smooth_image, stripes_image

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 over httpx; both work
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"iterations": 6, "max_size": 48, "optimizer": "adam"}
ENDLESS = {"iterations": 1_000_000, "max_size": 48, "optimizer": "adam"}


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def open_studio(tmp_path, tiny_mat):
    """open_studio(**options) -> a TestClient of a studio over tmp_path/runs (closed at the end)."""
    clients = []

    def start(**options):
        options = {"snapshot_seconds": 0.0, **options}
        client = TestClient(studio.create_app(studio.Studio(tmp_path / "runs", tmp_path / "models", tiny_mat,
                                                            **options)), base_url="http://127.0.0.1")
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def close(client):
    client.__exit__(None, None, None)


def upload(client, array, name="photo.png"):
    response = client.post(f"/api/uploads?name={name}", content=png(array))
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture
def pair(open_studio):
    """A studio with an uploaded content photo and style image: (client, content id, style id)."""
    client = open_studio()
    return client, upload(client, smooth_image(40, 48), "cat.png"), upload(client, stripes_image(44, 44), "swirls.png")


def start_run(client, content, style, **settings):
    response = client.post("/api/runs", json={"content": content, "styles": [style], "settings": settings})
    assert response.status_code == 201, response.text
    return response.json()


def events(client, run_id, until=None):
    """The progress events of a run until its end event (or until `until(event)` says stop)."""
    seen = []
    with client.stream("GET", f"/api/runs/{run_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
                if kind == "end":
                    break
            elif line.startswith("data: ") and kind == "progress":
                seen.append(json.loads(line[6:]))
                if until and until(seen[-1]):
                    break
    return seen


def finish(client, run_id):
    return events(client, run_id)[-1]


def test_a_run_streams_its_progress_and_keeps_result_settings_and_losses(pair):
    client, content, style = pair
    run = start_run(client, content, style, **QUICK, style_weight=50)
    assert run["state"] in ("queued", "running")
    seen = events(client, run["id"])
    # The stream sends the latest state: the last iteration may come with the state "done".
    iterations = [event["iteration"] for event in seen if event["state"] in ("running", "done") and "iteration" in event]
    assert iterations == sorted(iterations) and iterations[-1] == 6
    records = [row[0] for event in seen for row in event["records"]]
    assert records == list(range(7))  # every iteration's losses reach the page once, in order
    final = seen[-1]
    assert final["state"] == "done" and final["total"] == 6 and final["image"] == "result.png"
    assert set(final["files"]) >= {"result.png", "settings.json", "losses.png", "losses.jsonl"}

    result = Image.open(io.BytesIO(client.get(f"/api/runs/{run['id']}/files/result.png").content))
    assert result.size == (48, 40)
    saved = client.get(f"/api/runs/{run['id']}/files/settings.json").json()
    assert saved["settings"]["iterations"] == 6 and saved["settings"]["style_weight"] == 50
    assert "--style-weight=50" in saved["command"] and saved["inputs"]["content"]["name"] == "cat.png"
    losses = client.get(f"/api/runs/{run['id']}/files/losses.jsonl").text.splitlines()
    assert [json.loads(line)["iteration"] for line in losses] == list(range(7))
    assert client.get(f"/api/runs/{run['id']}/files/losses.png").content[:4] == b"\x89PNG"
    download = client.get(f"/api/runs/{run['id']}/files/result.png?download=1")
    assert "attachment" in download.headers["content-disposition"]


def test_the_command_in_settings_reproduces_the_run_from_a_terminal(pair, tiny_mat, tmp_path):
    client, content, style = pair
    run = start_run(client, content, style, **QUICK, seed=3)
    finish(client, run["id"])
    folder = tmp_path / "runs" / run["id"]
    argv = json.loads((folder / "settings.json").read_text())["options"]
    import neural_style
    shutil.copy(folder / "content.png", tmp_path / "content.png")
    shutil.copy(folder / "style1.png", tmp_path / "style1.png")
    assert neural_style.main(["--content", str(tmp_path / "content.png"), "--style", str(tmp_path / "style1.png"),
                              "--output", str(tmp_path / "cli.png"), "--network", str(tiny_mat), *argv]) == 0
    assert np.abs(images.load_image(tmp_path / "cli.png") - images.load_image(folder / "result.png")).max() <= 1


@pytest.mark.parametrize("settings", [
    {"iterations": -3}, {"iterations": "many"}, {"preset": "picasso"}, {"style_weight": "1e"},
    {"noise_ratio": 2}, {"style_weight": "nan"}, {"style_blend_weights": [1, 2]}, {"init": "image"},
    {"style_layers": "relu1_1:x"}, {"scales": "0.5,0.25"},
])
def test_settings_the_command_line_rejects_start_no_run_with_its_message(pair, tmp_path, capsys, settings):
    import neural_style
    client, content, style = pair
    response = client.post("/api/runs", json={"content": content, "styles": [style], "settings": settings})
    assert response.status_code == 400
    message = response.json()["error"]
    photo = images.save_image(tmp_path / "photo.png", smooth_image(40, 48))
    painting = images.save_image(tmp_path / "painting.png", stripes_image(44, 44))
    options = studio.run_options({**QUICK, **settings})
    try:
        neural_style.main(["--content", str(photo), "--style", str(painting), "--output", str(tmp_path / "out.png"),
                           *options])
    except SystemExit:
        pass
    assert message and message in capsys.readouterr().err  # the command line's own words
    assert client.get("/api/runs").json() == []


@pytest.mark.parametrize("settings, message", [
    ({"network": "/etc/passwd"}, "the studio has no setting 'network'"),
    ({"output": "/tmp/x.png"}, "the studio has no setting 'output'"),
    ({"iterations": [1, 2]}, "iterations takes one value"),
    ({"normalize_network": "yes"}, "normalize_network is true or false"),
    ({"style_blend_weights": "a b"}, "style_blend_weights takes numbers"),
])
def test_settings_the_page_has_no_field_for_are_refused(pair, settings, message):
    client, content, style = pair
    response = client.post("/api/runs", json={"content": content, "styles": [style], "settings": settings})
    assert response.status_code == 400 and message in response.json()["error"]
    assert client.get("/api/runs").json() == []


def test_a_run_the_loader_or_the_network_refuses_fails_with_the_one_line_message(open_studio):
    client = open_studio()
    content = upload(client, smooth_image(8, 10), "dot.png")  # smaller than the deepest layer needs
    style = upload(client, stripes_image(44, 44))
    final = finish(client, start_run(client, content, style, **QUICK)["id"])
    assert final["state"] == "failed" and "needs at least" in final["error"] and "\n" not in final["error"]


def test_stop_keeps_the_current_image(pair):
    client, content, style = pair
    run = start_run(client, content, style, **ENDLESS)
    events(client, run["id"], until=lambda event: event.get("iteration", 0) >= 3)
    assert client.post(f"/api/runs/{run['id']}/stop").status_code == 200
    reloaded = events(client, run["id"])  # as a reloaded page sees it: the whole loss curve again
    assert [row[0] for event in reloaded for row in event["records"]][:4] == [0, 1, 2, 3]
    final = reloaded[-1]
    assert final["state"] == "interrupted" and 3 <= final["iteration"] < final["total"]
    assert Image.open(io.BytesIO(client.get(f"/api/runs/{run['id']}/files/result.png").content)).size == (48, 40)


def test_runs_queue_one_at_a_time_and_show_their_place(pair):
    client, content, style = pair
    first = start_run(client, content, style, **ENDLESS)
    second = start_run(client, content, style, **QUICK)
    third = start_run(client, content, style, **QUICK)
    events(client, first["id"], until=lambda event: event["state"] == "running")
    places = {run["id"]: (run["state"], run["place"]) for run in client.get("/api/runs").json()}
    assert places == {first["id"]: ("running", None), second["id"]: ("queued", 1), third["id"]: ("queued", 2)}
    waiting = events(client, third["id"], until=lambda event: True)[0]
    assert waiting["state"] == "queued" and waiting["place"] == 2
    client.post(f"/api/runs/{second['id']}/stop")  # off the queue
    assert client.get(f"/api/runs/{third['id']}").json()["place"] == 1
    client.post(f"/api/runs/{first['id']}/stop")
    assert finish(client, third["id"])["state"] == "done"
    states = {run["id"]: run["state"] for run in client.get("/api/runs").json()}
    assert states == {first["id"]: "interrupted", second["id"]: "cancelled", third["id"]: "done"}
    started = {run_id: client.get(f"/api/runs/{run_id}").json().get("started") for run_id in states}
    assert started[second["id"]] is None and started[third["id"]] > started[first["id"]]


def test_a_restart_keeps_finished_runs_marks_the_running_one_interrupted_and_requeues(pair, open_studio, tmp_path):
    client, content, style = pair
    done = start_run(client, content, style, **QUICK)
    finish(client, done["id"])
    close(client)
    runs = tmp_path / "runs"
    # What a killed server leaves: a run marked running with its last snapshot, and a queued one.
    for run_id, state in (("20200101-000000-aaaaaa", "running"), ("20200101-000001-bbbbbb", "queued")):
        shutil.copytree(runs / done["id"], runs / run_id)
        (runs / run_id / "result.png").unlink()
        status = json.loads((runs / run_id / "status.json").read_text())
        (runs / run_id / "status.json").write_text(json.dumps({**status, "state": state}))
    client = open_studio()
    listed = {run["id"]: run for run in client.get("/api/runs").json()}
    assert listed[done["id"]]["state"] == "done" and "result.png" in listed[done["id"]]["files"]
    interrupted = listed["20200101-000000-aaaaaa"]
    assert interrupted["state"] == "interrupted" and interrupted["image"] == "current.png"
    assert client.get("/api/runs/20200101-000000-aaaaaa/files/current.png").content[:4] == b"\x89PNG"
    assert finish(client, "20200101-000001-bbbbbb")["state"] == "done"


def test_gallery_compares_runs_with_their_differences(pair):
    client, content, style = pair
    a = start_run(client, content, style, **QUICK, style_weight=10)
    b = start_run(client, content, style, **QUICK, style_weight=20)
    finish(client, b["id"])
    comparison = client.get(f"/api/compare?ids={a['id']},{b['id']}").json()
    assert "style_weight" in comparison["differ"] and "content_weight" not in comparison["differ"]
    assert {"content", "styles", "content_weight", "style_layers", "max_size"} <= set(comparison["keys"])
    assert [row["values"]["style_weight"] for row in comparison["runs"]] == [10, 20]
    assert client.get(f"/api/compare?ids={a['id']}").status_code == 404  # side by side needs two
    assert client.delete(f"/api/runs/{a['id']}").status_code == 204
    assert [run["id"] for run in client.get("/api/runs").json()] == [b["id"]]


def test_examples_can_be_chosen_by_id(open_studio):
    client = open_studio()
    examples = [image for image in client.get("/api/images").json() if image["example"]]
    assert "ex-chelsea" in {image["id"] for image in examples}
    assert client.get("/api/images/ex-chelsea").content[:2] == b"\xff\xd8"  # the JPEG itself


@pytest.mark.parametrize("body, name, status, message", [
    (b"not an image at all", "notes.txt", 400, "image notes.txt is not an image this program can read"),
    (png(smooth_image(40, 48))[:200], "cut.png", 400, "cut.png"),
    (b"", "empty.png", 400, "the upload is empty"),
    (png(smooth_image(200, 200)), "big.png", 400, "more than the studio's limit of 0.01 megapixels"),
    (b"x" * 300_000, "huge.png", 413, "larger than the studio's limit"),
])
def test_bad_uploads_get_the_loaders_one_line_message(open_studio, tmp_path, body, name, status, message):
    client = open_studio(max_upload_bytes=200_000, max_pixels=10_000)
    response = client.post(f"/api/uploads?name={name}", content=body)
    assert response.status_code == status and message in response.json()["error"]
    assert str(tmp_path) not in response.json()["error"] and "\n" not in response.json()["error"]
    assert not [image for image in client.get("/api/images").json() if not image["example"]]


def test_an_upload_name_is_only_a_label(pair, tmp_path):
    client, content, style = pair
    response = client.post("/api/uploads?name=../../../etc/evil.png", content=png(smooth_image(30, 30)))
    assert response.json()["name"] == "evil.png"
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["uploads"]


@pytest.mark.parametrize("path", [
    "/api/images/..%2F..%2Fstudio.py", "/api/images/../../studio.py", "/api/images/ex-..%2Fstudio",
    "/api/runs/..%2F..%2Fetc/files/result.png", "/api/runs/RUN/files/..%2Fstatus.json",
    "/api/runs/RUN/files/status.json", "/api/runs/RUN/files/content.png", "/api/runs/RUN/files/%2Fetc%2Fpasswd",
    "/static/..%2Fstudio.py", "/static/../studio.py", "/api/runs/..%2Fuploads/events",
])
def test_the_client_cannot_name_a_server_path(pair, path):
    client, content, style = pair
    run = start_run(client, content, style, **QUICK)
    finish(client, run["id"])
    response = client.get(path.replace("RUN", run["id"]))
    assert response.status_code == 404 and b"import" not in response.content


@pytest.mark.parametrize("image_id", ["../../etc/passwd", "/etc/passwd", "ex-../../studio", "u" + "0" * 16, 7])
def test_a_run_names_images_by_id_only(pair, image_id):
    client, content, style = pair
    response = client.post("/api/runs", json={"content": image_id, "styles": [style], "settings": QUICK})
    assert response.status_code == 400 and "not one of the studio's images" in response.json()["error"]


def test_requests_from_other_sites_or_host_names_are_refused(pair):
    client, content, style = pair
    run = start_run(client, content, style, **ENDLESS)
    response = client.post(f"/api/runs/{run['id']}/stop", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert client.get("/api/runs", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert client.get(f"/api/runs/{run['id']}").json()["state"] in ("queued", "running")
    client.post(f"/api/runs/{run['id']}/stop", headers={"Origin": "http://127.0.0.1"})
    assert finish(client, run["id"])["state"] == "interrupted"


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, trained):
    """A models folder holding conftest's trained network as `stripes`."""
    models = tmp_path_factory.mktemp("ff") / "models"
    shutil.copytree(trained, models / "stripes")
    return models


def test_a_trained_model_stylizes_an_upload_in_one_pass(tmp_path, tiny_mat, trained_model):
    (trained_model / "..hidden").mkdir(exist_ok=True)
    with TestClient(studio.create_app(studio.Studio(tmp_path / "runs", trained_model, tiny_mat)),
                    base_url="http://127.0.0.1") as client:
        assert client.get("/api/models").json()["models"] == ["stripes"]
        response = client.post("/api/models/stripes/stylize", content=png(smooth_image(36, 52)))
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (52, 36)
        bad = client.post("/api/models/stripes/stylize", content=b"garbage")
        assert bad.status_code == 400 and "not an image" in bad.json()["error"]
        small = client.post("/api/models/stripes/stylize", content=png(smooth_image(2, 30)))
        assert small.status_code == 400 and small.json()["error"].startswith("the image is 30x2 px")
        assert client.post("/api/models/..hidden/stylize", content=png(smooth_image(36, 52))).status_code == 404
        assert client.post("/api/models/..%2F..%2Fx/stylize", content=png(smooth_image(36, 52))).status_code == 404


def test_the_command_line_refuses_a_busy_port(capsys, tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert studio.main(["--port", str(port), "--runs", str(tmp_path / "runs")]) == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in capsys.readouterr().err


def start_server(tmp_path, network, *extra):
    """`python studio.py` in a subprocess; returns (process, the URL it printed)."""
    process = subprocess.Popen([sys.executable, str(ROOT / "studio.py"), "--port", "0", "--runs", str(tmp_path / "runs"),
                                "--network", str(network), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    line = process.stdout.readline()
    assert line.startswith("studio at http://127.0.0.1:"), line + process.stderr.read()
    return process, line.split()[2]


def stop_server(process):
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(30)
    finally:
        process.kill()


def test_the_command_line_prints_the_url_and_serves_the_page(tmp_path, tiny_mat):
    import httpx
    process, url = start_server(tmp_path, tiny_mat)
    try:
        page = httpx.get(url)
        assert page.status_code == 200 and "Neural style studio" in page.text
        assert httpx.get(url + "static/studio.js").status_code == 200
    finally:
        assert stop_server(process) == 0


def chromium():
    """The system's Chromium and its driver, or None: the browser test needs both."""
    for browser in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(browser)
        if path and shutil.which("chromedriver"):
            return path
    return None


@pytest.mark.skipif(chromium() is None, reason="no chromium and chromedriver installed (.ci/run installs them)")
def test_the_page_runs_a_style_transfer_in_a_real_browser(tmp_path, tiny_mat, trained_model):
    """Upload two images, start a run, watch progress and the final image appear; stylize a frame of
    Chromium's fake webcam with a trained model. A screenshot is left in the test's folder (and
    copied to $STUDIO_SCREENSHOT when set)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    content = images.save_image(tmp_path / "cat.png", images.resize(images.load_image(ROOT / "examples" / "chelsea.jpg"), 100, 150))
    style = images.save_image(tmp_path / "swirls.png", images.resize(images.load_image(ROOT / "examples" / "swirls.jpg"), 96, 128))
    process, url = start_server(tmp_path, tiny_mat, "--snapshot-seconds", "0.2", "--models", str(trained_model))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1900",
                     "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preset option"))
        driver.find_element(By.ID, "content-upload").send_keys(str(content))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#content-choices .choice.selected"))
        driver.find_element(By.ID, "style-upload").send_keys(str(style))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#style-choices .choice.selected"))
        driver.find_element(By.ID, "iterations").send_keys("40")
        driver.find_element(By.ID, "max_size").send_keys("150")
        driver.find_element(By.ID, "optimizer").send_keys("adam")
        driver.find_element(By.ID, "start").click()
        wait.until(lambda d: "iteration" in d.find_element(By.ID, "run-progress").text)
        wait.until(lambda d: d.find_element(By.ID, "run-state").text == "done")
        total = sum(count or 40 for _, count in PRESETS["fast"]["scales"])  # fast's coarse scale, then 40
        assert driver.find_element(By.ID, "run-progress").text.startswith(f"iteration {total}/{total}")
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('run-image'); return i.complete && i.naturalWidth"))
        assert "result.png" in driver.find_element(By.ID, "run-image").get_attribute("src")
        assert driver.execute_script("return document.getElementById('run-image').naturalWidth") == 150
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery .card img"))
        assert not driver.find_element(By.ID, "error").is_displayed()

        driver.find_element(By.ID, "webcam").click()  # Chromium's fake camera: a moving test pattern
        wait.until(lambda d: d.execute_script("return document.getElementById('video').videoWidth > 0"))
        driver.find_element(By.ID, "snap").click()
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('fast-result'); return !i.hidden && i.complete && i.naturalWidth"))
        assert not driver.find_element(By.ID, "fast-error").is_displayed()
        shot = tmp_path / "studio.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("STUDIO_SCREENSHOT"):
            shutil.copy(shot, os.environ["STUDIO_SCREENSHOT"])
        assert Image.open(shot).size[0] >= 1000
    finally:
        driver.quit()
        stop_server(process)
