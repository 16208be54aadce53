"""The options page: Designer form, settings round trip, and what "Test connection" reports."""

from __future__ import annotations

import pytest

# QGIS-facing: also run on QGIS 3.40 and the newest QGIS (scripts/test-qgis-versions)
pytestmark = pytest.mark.qgis_versions


def test_options_page_round_trip(qgis_app):
    from floodmapper.plugin.core.settings import Settings
    from floodmapper.plugin.gui.options import FloodMapperOptionsFactory, FloodMapperOptionsWidget
    from floodmapper.plugin.toolbelt import settings as stored

    factory = FloodMapperOptionsFactory()
    assert factory.title() == "Flood Mapper"
    page = FloodMapperOptionsWidget(None)
    page.server_url.setText("https://gpu-box.example:8443")
    page.read_timeout.setValue(123.0)
    page.device.setCurrentText("cpu")
    page.extra_args.setText("--max-model-len 1")
    page.apply()
    loaded = stored.load(apply_env=False)
    assert loaded.server_url == "https://gpu-box.example:8443"
    assert loaded.read_timeout == 123.0
    assert loaded.device == "cpu"
    assert loaded.extra_args == "--max-model-len 1"
    # a fresh page shows what is stored; defaults are not pinned
    again = FloodMapperOptionsWidget(None)
    assert again.server_url.text() == "https://gpu-box.example:8443"
    again.load(Settings())
    again.apply()
    assert stored.get_value("server_url") is None


@pytest.mark.vllm
def test_connection_report_names_transport(qgis_app, vllm_server, vllm_tensor_server):
    from dataclasses import replace

    from floodmapper.plugin.core.settings import Settings
    from floodmapper.plugin.gui.options import describe_server

    image = describe_server(replace(Settings(), server_url=vllm_server.url))
    assert "vLLM" in image and vllm_server.model in image and "image-to-image" in image
    tensor = describe_server(replace(Settings(), server_url=vllm_tensor_server.url))
    assert "tensor-to-tensor" in tensor
