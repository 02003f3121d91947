"""Remote headers from a server that ignores Range (200, the whole file, no Content-Range): llama4ctl still takes
just the header, and with the file size unknown a header longer than the file is refused as it is on disk."""

from __future__ import annotations

import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llama4ctl.checkpoint.header import read_header
from llama4ctl.errors import CheckpointError
from llama4ctl.hub import _remote_header

REPO = "meta-llama/Range-Ignored"


@pytest.fixture
def serve(monkeypatch):
    """serve(data) -> the bytes every GET gets back, whole, whatever its Range header asks."""
    from huggingface_hub import constants

    body = {"data": b""}

    class WholeFile(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body["data"])))
            self.end_headers()
            try:
                self.wfile.write(body["data"])
            except OSError:
                pass  # the client stops reading once it has the header

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), WholeFile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")

    def _serve(data: bytes) -> None:
        body["data"] = data

    yield _serve
    server.shutdown()
    server.server_close()


def _file(tmp_path: Path, header: bytes, data: bytes, length: int | None = None) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


def test_a_server_ignoring_range_still_yields_the_same_tensors_as_the_file(serve, tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "BF16", "shape": [3], "data_offsets": [8, 14]}}).encode()
    path = _file(tmp_path, header, bytes(14))
    serve(path.read_bytes())
    remote = _remote_header(REPO, path.name, revision=None, token=None)
    assert remote.path == Path(f"{REPO}/model.safetensors")
    assert [(t.name, t.dtype, t.shape, t.start, t.end) for t in remote.tensors] == \
        [(t.name, t.dtype, t.shape, t.start, t.end) for t in read_header(path).tensors]


def test_without_a_file_size_a_header_longer_than_the_file_is_refused_as_on_disk(serve, tmp_path):
    path = _file(tmp_path, b'{"a":1}', b"", length=10**6)
    serve(path.read_bytes())
    with pytest.raises(CheckpointError) as remote:
        _remote_header(REPO, path.name, revision=None, token=None)
    with pytest.raises(CheckpointError) as local:
        read_header(path)
    assert remote.value.path == f"{REPO}/model.safetensors"
    assert remote.value.message == local.value.message
    assert local.value.message == "header length 1000000 runs past the end of the file (15 bytes)"
