"""`lookalike serve` over the real pipeline: the installed command, real workers, real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route

from api_support import free_port
from conftest import LOOKALIKE


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def multipart(image: bytes, **fields: str) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


class Serving:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [LOOKALIKE, "serve", "--port", str(self.port)],
            env={**os.environ, **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, log.read_text()
            try:
                if http("GET", self.base + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def test_serve_answers_through_the_workers_then_in_process_when_none_is_left(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    worker = start_worker()
    rows = [
        catalog_row(
            f"s{i}", f"Served {i}", [image_server.add(f"/srv/{i}.jpg", Route(body=images.product_bytes(60 + i)))]
        )
        for i in range(6)
    ]
    assert cli("ingest", str(write_catalog(tmp_path / "c.csv", rows)), "--wait").code == 0
    photo = images.resized_copy(images.product_bytes(63), 0.6, fmt="JPEG", quality=75)
    (tmp_path / "q.jpg").write_bytes(photo)
    expected = cli("search", str(tmp_path / "q.jpg"), "-k", "3", "--json").json()
    assert expected[0]["product_id"] == "s3"

    serving = Serving(env, tmp_path / "serve.log")
    try:
        status, _headers, ready = http("GET", serving.base + "/readyz")
        assert status == 200, ready
        body, headers = multipart(photo, k="3")
        status, _headers, answer = http("POST", serving.base + "/v1/search", body, headers)
        assert status == 200, answer
        assert answer["results"] == expected, "the API's results are exactly what `search --json` prints"
        assert isinstance(answer["took_ms"], int | float)
        # The API process itself never loaded the model nor opened the store: the workers did the work.
        maps = Path(f"/proc/{serving.process.pid}/maps").read_text()
        assert "onnxruntime" not in maps
        store_dir = str(Path(env["LOOKALIKE_QDRANT_PATH"]).resolve())
        fds = Path(f"/proc/{serving.process.pid}/fd")
        assert not any(
            str(Path(os.readlink(fd)) if fd.is_symlink() else "").startswith(store_dir) for fd in fds.iterdir()
        )

        assert worker.stop() == 0
        status, _headers, ready = http("GET", serving.base + "/readyz")
        assert status == 503, ready
        assert "store" in json.dumps(ready) and "query_worker" in json.dumps(ready)
        status, _headers, alone = http("POST", serving.base + "/v1/search", body, headers)
        assert status == 200, alone
        assert [hit["product_id"] for hit in alone["results"]] == [hit["product_id"] for hit in expected]
    finally:
        serving.stop()
    assert "answering in this process" in serving.log.read_text()


def test_the_real_backend_says_503_with_retry_after_when_the_broker_is_gone(env: dict[str, str], monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from lookalike.api import create_app
    from lookalike.app.gateway import Gateway
    from lookalike.config.settings import get_settings, reset_settings

    monkeypatch.setenv("LOOKALIKE_BROKER_URL", "redis://127.0.0.1:1/0")
    reset_settings()
    settings = get_settings()
    with TestClient(create_app(Gateway(settings), settings)) as client:  # (its exit stops the readiness thread)
        response = client.post("/v1/search", json={"text": "red shoes"})
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        assert client.get("/readyz").status_code == 503
