"""Opt-in downloads against a local HTTP server on 127.0.0.1 (no other address is ever contacted)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

import prunekit.data as D
from prunekit.data import specs
from prunekit.data.specs import FileSpec
from prunekit.errors import DataError


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server naming
        if self.path == "/lying-length.bin":  # announces more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(base URL, served folder); the server thread is stopped and joined afterwards."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_file_verified_and_atomic(server, tmp_path):
    base, served = server
    payload = bytes(range(256)) * 5000
    (served / "good.bin").write_bytes(payload)
    dest = tmp_path / "out" / "good.bin"
    got = D.download_file(f"{base}/good.bin", dest, md5=hashlib.md5(payload).hexdigest(),
                          sha256=hashlib.sha256(payload).hexdigest(), timeout=5)
    assert got == dest and dest.read_bytes() == payload
    assert _leftovers(dest.parent) == ["good.bin"]  # no temp file left


def test_corrupted_download_raises_and_leaves_nothing(server, tmp_path):
    base, served = server
    payload = b"the real file" * 1000
    (served / "file.bin").write_bytes(payload[:-1] + b"X")  # one corrupted byte
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"file.bin: sha256 checksum mismatch for file.bin: expected"):
        D.download_file(f"{base}/file.bin", out / "file.bin", sha256=hashlib.sha256(payload).hexdigest(), timeout=5)
    assert _leftovers(out) == []
    with pytest.raises(DataError, match="md5 checksum mismatch"):
        D.download_file(f"{base}/file.bin", out / "file.bin", md5=hashlib.md5(payload).hexdigest(), timeout=5)
    assert _leftovers(out) == []


def test_http_errors_and_truncation_are_data_errors(server, tmp_path):
    base, _ = server
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"missing.bin: download failed \(HTTP 404 "):
        D.download_file(f"{base}/missing.bin", out / "missing.bin", timeout=5)
    with pytest.raises(DataError, match="lying-length.bin"):
        D.download_file(f"{base}/lying-length.bin", out / "x.bin", timeout=5)
    assert _leftovers(out) == []


def test_dataset_download_from_mirror_checks_official_checksums(server, tmp_path):
    base, served = server
    for f in specs.get_spec("mnist").files:
        if f.urls:
            (served / f.name).write_bytes(b"not the official file")
    with pytest.raises(DataError, match=r"sha256 checksum mismatch for train-images-idx3-ubyte.gz: expected 440fcabf"):
        D.download("mnist", tmp_path / "data", mirror=base, timeout=5)
    assert _leftovers(tmp_path / "data" / "mnist") == []


def test_dataset_download_success_skip_and_zip_extraction(server, tmp_path, monkeypatch):
    base, served = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
        zf.writestr("tiny-imagenet-200/val/val_annotations.txt", "")
    blob = buf.getvalue()
    (served / "tiny-imagenet-200.zip").write_bytes(blob)
    fake = dataclasses.replace(specs.get_spec("tiny_imagenet"), files=(
        FileSpec("tiny-imagenet-200.zip", (f"{base}/tiny-imagenet-200.zip",), sha256=hashlib.sha256(blob).hexdigest(),
                 extract="zip", extract_top="tiny-imagenet-200"),))
    monkeypatch.setattr(specs, "get_spec", lambda name: fake)
    paths = D.download("tiny_imagenet", tmp_path / "data", timeout=5)
    folder = tmp_path / "data" / "tiny_imagenet"
    assert paths == [folder / "tiny-imagenet-200.zip"]
    assert (folder / "tiny-imagenet-200" / "wnids.txt").read_text() == "n01\n"
    assert _leftovers(folder) == ["tiny-imagenet-200", "tiny-imagenet-200.zip"]
    # present and verified: not fetched again (the server no longer has it)
    (served / "tiny-imagenet-200.zip").unlink()
    assert D.download("tiny_imagenet", tmp_path / "data", timeout=5) == paths


def test_zip_with_escaping_members_is_refused(server, tmp_path, monkeypatch):
    base, served = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny-imagenet-200/../../evil.txt", "x")
    blob = buf.getvalue()
    (served / "tiny-imagenet-200.zip").write_bytes(blob)
    fake = dataclasses.replace(specs.get_spec("tiny_imagenet"), files=(
        FileSpec("tiny-imagenet-200.zip", (f"{base}/tiny-imagenet-200.zip",), sha256=hashlib.sha256(blob).hexdigest(),
                 extract="zip", extract_top="tiny-imagenet-200"),))
    monkeypatch.setattr(specs, "get_spec", lambda name: fake)
    with pytest.raises(DataError, match="unexpected member"):
        D.download("tiny_imagenet", tmp_path / "data", timeout=5)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()
    assert not (tmp_path / "data" / "tiny_imagenet" / "tiny-imagenet-200").exists()
