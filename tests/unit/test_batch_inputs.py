"""plugin.batch: a folder on the command line stands for the rasters in it."""

from __future__ import annotations

import pytest

from plugin import batch
from plugin.core.errors import InputError


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_folder_means_its_rasters_in_name_order(tmp_path):
    scenes = tmp_path / "scenes"
    for name in ("b.tif", "a.TIFF", "c.vrt", "notes.txt", "a.tif.aux.xml", ".hidden.tif", "sub/d.tif"):
        _touch(scenes / name)
    single = _touch(tmp_path / "single.tif")
    out = tmp_path / "floods"
    got = batch.expand_inputs([str(scenes), str(single)], out)
    assert got == [str(scenes / "a.TIFF"), str(scenes / "b.tif"), str(scenes / "c.vrt"), str(single)]
    got = batch.expand_inputs([str(scenes)], out, recursive=True)
    assert got == [str(scenes / n) for n in ("a.TIFF", "b.tif", "c.vrt", "sub/d.tif")]


def test_outputs_written_into_the_input_folder_are_not_inputs(tmp_path):
    scenes = tmp_path / "scenes"
    _touch(scenes / "a.tif")
    _touch(scenes / "a_flood.tif")
    _touch(scenes / "other" / "x_flood.tif")  # not in the output folder: an input like any other
    assert batch.expand_inputs([str(scenes)], scenes, recursive=True) == [
        str(scenes / "a.tif"), str(scenes / "other" / "x_flood.tif")]


def test_a_folder_without_rasters_is_refused_with_the_way_out(tmp_path):
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "empty" / "sub" / "a.tif")
    with pytest.raises(InputError, match=r"no \*\.tif, \*\.tiff, \*\.vrt file in it\.") as caught:
        batch.expand_inputs([str(tmp_path / "empty")], tmp_path / "out")
    assert "--recursive" in caught.value.hint


def test_main_reports_an_empty_folder_before_loading_any_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert batch.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "has no rasters" in capsys.readouterr().err
