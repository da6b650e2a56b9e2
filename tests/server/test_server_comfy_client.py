"""Compatibility: the PyPI ComfyUI client `comfy_api_simplified` (requests + websockets, talks to nothing
but the URL it is given) runs the official SD3.5 Medium API workflow against `sd35 serve` unchanged; only
the workflow's size and steps are set, through the library's own API, to fit the tiny model."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from server_helpers import LiveServer
from server_toys import WORKFLOWS

comfy = pytest.importorskip("comfy_api_simplified", reason="pip install comfy-api-simplified (test extra)")


def test_official_workflow_through_comfy_api_simplified(live_server: LiveServer, tmp_path) -> None:
    api = comfy.ComfyApiWrapper(live_server.url)
    workflow = comfy.ComfyWorkflowWrapper(str(WORKFLOWS / "SD3.5M_example_workflow_api.json"))
    workflow.set_node_param("EmptySD3LatentImage", "width", 64)
    workflow.set_node_param("EmptySD3LatentImage", "height", 64)
    workflow.set_node_param("KSampler", "steps", 3)
    images = api.queue_and_wait_images(workflow, "PreviewImage")  # the official graph previews to temp/
    assert len(images) == 1
    name, data = next(iter(images.items()))
    assert name.endswith(".png") and Image.open(io.BytesIO(data)).size == (64, 64)

    assert "KSampler" in api.get_object_info("KSampler")
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}
    assert api.get_system_stats()["devices"]
    assert api.get_embeddings() == []
    init = tmp_path / "client_upload.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(init)
    uploaded = api.upload_image(init)  # the library's default subfolder
    assert uploaded == {"name": "client_upload.png", "subfolder": "default_upload_folder", "type": "input"}
    api.interrupt()  # nothing running: still 200
