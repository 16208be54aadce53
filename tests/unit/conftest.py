"""Fixtures of the pipeline tests: `world`, an image-to-image World on the fake vLLM peer whose temporary files go
to a folder of its own (tests/fixtures/world.py), and `tensor_world`, the same World serving tensors. A test
module with a world of its own (flood extent, long runs) defines its own `world`."""

from __future__ import annotations

import pytest

from tests.fixtures.world import image_world


@pytest.fixture
def world(tmp_path, monkeypatch):
    yield from image_world(tmp_path, monkeypatch)


@pytest.fixture
def tensor_world(world):
    world.kind = "tensor"
    return world
