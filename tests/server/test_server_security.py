"""Safety: /view and uploads stay in their folders, sizes and content types are checked, every bad request
is a JSON 4xx (never a 500), the token guards every route, and Host/Origin checks refuse other sites."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image
from server_helpers import WS_BASE
from starlette.websockets import WebSocketDisconnect


def _png(size: tuple[int, int] = (8, 8), colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client, name: str, data: bytes, content_type: str = "image/png", **form: str):
    return client.post("/upload/image", files={"image": (name, data, content_type)}, data=form)


def _json_4xx(response, status: int | None = None) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    body = response.json()
    assert "error" in body and "Traceback" not in response.text
    return body


@pytest.fixture
def secret_outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    return secret


def test_view_refuses_traversal_absolute_paths_and_symlink_escapes(client, secret_outside: Path) -> None:
    output = client.services.output_dir
    (output / "sub").mkdir(parents=True)
    (output / "sub" / "ok.png").write_bytes(_png())
    os.symlink(secret_outside, output / "link.png")
    os.symlink(secret_outside.parent, output / "escape")
    os.symlink(output / "sub" / "ok.png", output / "inside.png")
    attempts = [
        {"filename": "../secret.txt"},
        {"filename": "..\\secret.txt"},
        {"filename": str(secret_outside)},
        {"filename": "secret.txt", "subfolder": ".."},
        {"filename": "secret.txt", "subfolder": "sub/../.."},
        {"filename": "secret.txt", "subfolder": str(secret_outside.parent)},
        {"filename": "passwd", "subfolder": "/etc"},
        {"filename": "link.png"},
        {"filename": "secret.txt", "subfolder": "escape"},
        {"filename": "ok.png", "type": "../output"},
        {"filename": "ok.png\x00.txt", "subfolder": "sub"},
        {"filename": ""},
    ]
    for params in attempts:
        body = _json_4xx(client.get("/view", params=params))
        assert "top secret" not in str(body)
    assert client.get("/view?filename=..%2F..%2Fsecret.txt").status_code in (400, 404)
    assert client.get("/view", params={"filename": "ok.png", "subfolder": "sub"}).content == _png()
    assert client.get("/view", params={"filename": "inside.png"}).status_code == 200  # symlink inside is fine
    assert _json_4xx(client.get("/view", params={"filename": "missing.png"}), 404)


def test_view_sends_non_images_as_downloads(client) -> None:
    (client.services.output_dir / "page.html").write_text("<script>alert(1)</script>")
    answer = client.get("/view", params={"filename": "page.html"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["content-disposition"].startswith("attachment")
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_upload_is_confined_and_never_overwrites_without_the_flag(client, secret_outside: Path) -> None:
    input_dir = client.services.input_dir
    for name in ("../evil.png", "..", "a/b.png", "a\\b.png", "/etc/evil.png", ".hidden.png"):
        _json_4xx(_upload(client, name, _png()))
    for subfolder in ("..", "../x", "/tmp", "a/../../x"):
        _json_4xx(_upload(client, "x.png", _png(), subfolder=subfolder))
    input_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(secret_outside.parent, input_dir / "out")
    _json_4xx(_upload(client, "x.png", _png(), subfolder="out"), 403)
    assert not (secret_outside.parent / "x.png").exists()
    assert not list(secret_outside.parent.glob("*.png"))

    first = _upload(client, "cat.png", _png()).json()
    assert first == {"name": "cat.png", "subfolder": "", "type": "input"}
    assert _upload(client, "cat.png", _png()).json()["name"] == "cat.png"  # same content: reused
    other = _png(colour=(1, 2, 3))
    assert _upload(client, "cat.png", other).json()["name"] == "cat (1).png"
    assert (input_dir / "cat.png").read_bytes() == _png()
    assert _upload(client, "cat.png", other, overwrite="true").json()["name"] == "cat.png"
    assert (input_dir / "cat.png").read_bytes() == other
    mask = os.umask(0)
    os.umask(mask)
    assert ((input_dir / "cat.png").stat().st_mode & 0o777) == 0o666 & ~mask  # not mkstemp's 0600
    assert not [p for p in input_dir.iterdir() if p.name.startswith(".upload.")]  # no temp file left
    nested = _upload(client, "dog.png", _png(), subfolder="pets/2025").json()
    assert nested == {"name": "dog.png", "subfolder": "pets/2025", "type": "input"}
    os.symlink(secret_outside, input_dir / "link.png")
    replaced = _upload(client, "link.png", other, overwrite="1").json()
    assert replaced["name"] == "link.png" and secret_outside.read_text() == "top secret"


def test_upload_checks_content_type_content_and_size(make_client) -> None:
    client = make_client(max_upload_bytes=4096)
    _json_4xx(_upload(client, "x.png", b"<html>hi</html>", "text/html"), 415)
    _json_4xx(_upload(client, "x.png", b"definitely not an image"), 400)
    _json_4xx(_upload(client, "x.jpg", _png()), 400)  # extension does not match the content
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    _json_4xx(_upload(client, "x.tiff", buffer.getvalue(), "application/octet-stream"), 415)
    noisy = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    big = io.BytesIO()
    noisy.save(big, format="PNG")
    assert len(big.getvalue()) > 4096
    _json_4xx(_upload(client, "big.png", big.getvalue()), 413)
    _json_4xx(client.post("/upload/image", data={"type": "input"}))  # no file
    _json_4xx(_upload(client, "x.png", _png(), type="models"))
    assert _upload(client, "ok.png", _png(), "application/octet-stream").status_code == 200


def test_oversized_and_malformed_bodies_are_4xx(make_client) -> None:
    client = make_client(max_body_bytes=10_000)
    _json_4xx(client.post("/prompt", content=b"{" + b" " * 20_000 + b"}"), 413)
    chunks = (b"x" * 4096 for _ in range(5))
    _json_4xx(client.post("/prompt", content=chunks, headers={"content-type": "application/json"}), 413)
    _json_4xx(client.post("/prompt", content=b"[" * 5000 + b"]" * 5000, headers={"content-type": "application/json"}))
    for body in (b"", b"null", b'"text"', b'{"prompt": []}', b'{"prompt": {"1": 5}}', b"\xff\xfe"):
        _json_4xx(client.post("/prompt", content=body, headers={"content-type": "application/json"}))
    _json_4xx(client.post("/queue", content=b'{"delete": "abc"}', headers={"content-type": "application/json"}))
    _json_4xx(client.post("/interrupt", content=b"{oops", headers={"content-type": "application/json"}))
    _json_4xx(client.get("/history", params={"max_items": "many"}))
    _json_4xx(client.post("/sd35/tokens", json={"text": 5}))
    _json_4xx(client.post("/upload/image", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}))


def test_unknown_routes_and_methods_get_json_errors(client) -> None:
    _json_4xx(client.get("/no/such/route"), 404)
    _json_4xx(client.get("/api/nothing"), 404)
    _json_4xx(client.delete("/prompt"), 405)
    _json_4xx(client.get("/upload/image"), 405)
    _json_4xx(client.get("/static/../app.py"), 404)


def test_token_is_needed_on_every_route(make_client) -> None:
    token = "s3cret-token-123"
    client = make_client(auth_token=token)
    for method, path in [
        ("GET", "/"),
        ("GET", "/queue"),
        ("POST", "/prompt"),
        ("GET", "/view?filename=x.png"),
        ("GET", "/object_info"),
        ("GET", "/openapi.json"),
        ("GET", "/static/app.js"),
    ]:
        body = _json_4xx(client.request(method, path), 401)
        assert body["error"]["type"] == "unauthorized"
    assert client.get("/queue", headers={"Authorization": "Bearer wrong-token-1"}).status_code == 401
    assert client.get("/queue", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    page = client.get(f"/?token={token}")
    assert page.status_code == 200 and "sd35_token" in page.headers["set-cookie"]
    assert "HttpOnly" in page.headers["set-cookie"]
    assert client.get("/queue").status_code == 200  # the cookie now authenticates (img src, fetch)
    client.cookies.clear()
    with pytest.raises(WebSocketDisconnect), client.websocket_connect(f"{WS_BASE}/ws?clientId=a") as ws:
        ws.receive_json()
    with client.websocket_connect(f"{WS_BASE}/ws?clientId=a&token={token}") as ws:
        assert ws.receive_json()["type"] == "status"


def test_host_and_origin_checks(make_client) -> None:
    client = make_client()
    assert client.get("/queue", headers={"host": "evil.example:8188"}).status_code == 403
    assert client.get("/queue", headers={"host": "localhost:8188"}).status_code == 200
    assert client.get("/queue", headers={"host": "[::1]:8188"}).status_code == 200
    assert client.post("/interrupt", headers={"origin": "http://evil.example"}).status_code == 403
    assert client.post("/interrupt", headers={"origin": "http://127.0.0.1:8188"}).status_code == 200
    evil = {"origin": "http://evil.example"}
    with pytest.raises(WebSocketDisconnect), client.websocket_connect(f"{WS_BASE}/ws", headers=evil) as ws:
        ws.receive_json()
    listening = make_client(loopback_only=False)
    assert listening.get("/queue", headers={"host": "192.0.2.7:8188"}).status_code == 200
