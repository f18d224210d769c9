"""download.fetch against a real HTTP server on 127.0.0.1 (no other network)."""
import hashlib
import io
import os
import socket

import pytest

import download
from errors import UserError

BODY = os.urandom(200_000)
SHA = hashlib.sha256(BODY).hexdigest()
HINT = "download it by hand (SHA256 abc) and save it as weights/x.mat"


@pytest.fixture
def serve(serve):
    """The shared file server (conftest.py), serving BODY unless told otherwise."""
    return lambda ranges=True, cut=False, body=BODY: serve(ranges, cut, body)


def paths(tmp_path):
    dest = tmp_path / "weights" / "net.mat"
    return dest, dest.with_name("net.mat.part")


def test_full_download(serve, tmp_path):
    url, requests = serve()
    dest, part = paths(tmp_path)
    assert download.fetch(url, dest, SHA, progress=False) == dest
    assert dest.read_bytes() == BODY
    assert not part.exists()
    assert requests == [None]


def test_resumes_from_part_file(serve, tmp_path):
    url, requests = serve()
    dest, part = paths(tmp_path)
    part.parent.mkdir()
    part.write_bytes(BODY[:70_000])
    download.fetch(url, dest, SHA, progress=False)
    assert dest.read_bytes() == BODY
    assert requests == ["bytes=70000-"]
    assert not part.exists()


def test_server_ignoring_range_starts_over(serve, tmp_path):
    url, requests = serve(ranges=False)
    dest, part = paths(tmp_path)
    part.parent.mkdir()
    part.write_bytes(BODY[:70_000])
    download.fetch(url, dest, SHA, progress=False)
    assert requests == ["bytes=70000-"]
    assert dest.read_bytes() == BODY  # not 70 000 bytes twice


def test_complete_part_file_answered_416_is_verified_and_kept(serve, tmp_path):
    url, requests = serve()
    dest, part = paths(tmp_path)
    part.parent.mkdir()
    part.write_bytes(BODY)
    download.fetch(url, dest, SHA, progress=False)
    assert requests == [f"bytes={len(BODY)}-"]
    assert dest.read_bytes() == BODY and not part.exists()


def test_checksum_mismatch_deletes_part(serve, tmp_path):
    url, _ = serve()
    dest, part = paths(tmp_path)
    wrong = "0" * 64
    with pytest.raises(UserError) as error:
        download.fetch(url, dest, wrong, progress=False, manual_hint=HINT)
    message = str(error.value)
    assert url in message and wrong in message and SHA in message and HINT in message
    assert not dest.exists() and not part.exists()


def test_connection_refused(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dest, part = paths(tmp_path)
    with pytest.raises(UserError) as error:
        download.fetch(f"http://127.0.0.1:{port}/file", dest, SHA, progress=False, manual_hint=HINT)
    assert "refused" in str(error.value).lower()
    assert HINT in str(error.value)
    assert not dest.exists()


def test_http_404(serve, tmp_path):
    url, _ = serve()
    dest, _ = paths(tmp_path)
    with pytest.raises(UserError, match="404"):
        download.fetch(url.replace("/file", "/missing"), dest, SHA, progress=False)
    assert not dest.exists()


def test_silent_server_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT_S", 0.2)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/file"
        with pytest.raises(UserError, match="timed out"):
            download.fetch(url, paths(tmp_path)[0], SHA, progress=False)


def test_cut_connection_keeps_part_then_resumes(serve, tmp_path):
    broken, _ = serve(cut=True)
    dest, part = paths(tmp_path)
    with pytest.raises(UserError) as error:
        download.fetch(broken, dest, SHA, progress=False, manual_hint=HINT)
    assert "kept" in str(error.value) and HINT in str(error.value)
    assert part.read_bytes() == BODY[:len(BODY) // 2]
    assert not dest.exists()

    good, requests = serve()
    download.fetch(good, dest, SHA, progress=False)
    assert requests == [f"bytes={len(BODY) // 2}-"]
    assert dest.read_bytes() == BODY and not part.exists()


def test_ctrl_c_keeps_part_and_reraises(serve, tmp_path, monkeypatch):
    url, _ = serve()
    monkeypatch.setattr(download, "CHUNK", 50_000)
    urlopen = download.urllib.request.urlopen

    def interrupted_after_one_chunk(*args, **kwargs):
        response = urlopen(*args, **kwargs)
        read, calls = response.read, []

        def read_then_interrupt(size):
            calls.append(size)
            if len(calls) > 1:
                raise KeyboardInterrupt
            return read(size)
        response.read = read_then_interrupt
        return response

    monkeypatch.setattr(download.urllib.request, "urlopen", interrupted_after_one_chunk)
    dest, part = paths(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        download.fetch(url, dest, SHA, progress=False)
    assert part.read_bytes() == BODY[:50_000]
    assert not dest.exists()


def test_progress_in_a_log_is_whole_lines(serve, tmp_path, capsys):
    url, _ = serve()
    download.fetch(url, paths(tmp_path)[0], SHA, progress=True)
    err = capsys.readouterr().err
    assert "100%" in err and "MB/s" in err
    assert err.endswith("\n") and "\r" not in err


def test_progress_on_a_terminal_rewrites_one_line(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = download._Progress(100 * download.MB, 0, stream)
    for step in range(1, 101):
        bar.update(step * download.MB)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") < 100  # tqdm redraws at most every 0.1 s, not once per chunk
    assert "100%  100.0 / 100.0 MB" in text.rsplit("\r", 1)[1]  # the last frame is the final count
    assert "elapsed, ETA" in text.rsplit("\r", 1)[1]  # the bar's own ETA, in its one line
    assert text.endswith("\n") and text.count("\n") == 1  # no kept lines on a terminal
