"""plugin/batch_inputs.py: a folder on the command line stands for the rasters and products in it."""

from __future__ import annotations

import pytest

from plugin import batch, batch_inputs, batch_offline
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
    got = batch_inputs.expand_inputs([str(scenes), str(single)], out)
    assert got == [str(scenes / "a.TIFF"), str(scenes / "b.tif"), str(scenes / "c.vrt"), str(single)]
    got = batch_inputs.expand_inputs([str(scenes)], out, recursive=True)
    assert got == [str(scenes / n) for n in ("a.TIFF", "b.tif", "c.vrt", "sub/d.tif")]


def test_outputs_written_into_the_input_folder_are_not_inputs(tmp_path):
    scenes = tmp_path / "scenes"
    _touch(scenes / "a.tif")
    _touch(scenes / "a_flood.tif")
    _touch(scenes / "other" / "x_flood.tif")  # not in the output folder: an input like any other
    assert batch_inputs.expand_inputs([str(scenes)], scenes, recursive=True) == [
        str(scenes / "a.tif"), str(scenes / "other" / "x_flood.tif")]


def test_a_folder_without_rasters_is_refused_with_the_way_out(tmp_path):
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "empty" / "sub" / "a.tif")
    no_rasters = r"no \*\.tif, \*\.tiff, \*\.vrt file and no Sentinel-2 product \(\*\.zip, \*\.SAFE\) in it\."
    with pytest.raises(InputError, match=no_rasters) as caught:
        batch_inputs.expand_inputs([str(tmp_path / "empty")], tmp_path / "out")
    assert "--recursive" in caught.value.hint


def test_main_reports_an_empty_folder_before_loading_any_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert batch.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "has no rasters" in capsys.readouterr().err


def _dn(h: int = 24, w: int = 24):
    import numpy as np

    return np.full((6, h, w), 1500, np.uint16)


def test_a_folder_means_its_sentinel2_products_too_and_never_their_band_files(tmp_path):
    from tests.fixtures.sentinel2_safe import L1C_NAME, NAME, write_l1c, write_l2a

    downloads = tmp_path / "downloads"
    archive = write_l2a(downloads, _dn(), zipped=True)
    safe = write_l1c(downloads / "sub", _dn())
    _touch(downloads / "a.tif")
    _touch(downloads / "other.zip", b"PK\x05\x06" + bytes(18))  # an empty zip: no product
    assert batch_inputs.expand_inputs([str(downloads)], tmp_path / "out") == [str(archive), str(downloads / "a.tif")]
    found = batch_inputs.expand_inputs([str(downloads)], tmp_path / "out", recursive=True)
    assert found == [str(archive), str(downloads / "a.tif"), str(safe)]
    given = batch_inputs.expand_inputs([str(safe)], tmp_path / "out")
    assert given == [str(safe)], "a product folder given is one input"
    jobs = batch_inputs.plan(found, tmp_path / "out")
    assert [j.output_path.rsplit("/", 1)[-1] for j in jobs] == [f"{NAME}_flood.tif", "a_flood.tif",
                                                                 f"{L1C_NAME}_flood.tif"]


def test_a_product_is_checked_when_stacked_and_refused_by_the_offline_engine(tmp_path):
    from tests.fixtures.sentinel2_safe import write_l2a

    archive = write_l2a(tmp_path, _dn(), zipped=True)
    job = batch_inputs.Job(str(archive), str(tmp_path / "p_flood.tif"))
    batch_inputs.validate(job, None)  # no band count to check before the bands are stacked
    with pytest.raises(InputError) as caught:
        batch_offline.run_one(None, job, None, str(tmp_path))
    assert "Sentinel-2 product" in caught.value.message and "--engine local" in caught.value.hint


def test_indices_default_to_the_engine_s_own_choice(tmp_path):
    assert batch.parse_args(["a.tif", "--out", "o"]).indices is None
    assert batch.parse_args(["a.tif", "--out", "o", "--indices", "1,2,3,8,11,12"]).indices == [1, 2, 3, 8, 11, 12]
    with pytest.raises(SystemExit):
        batch.parse_args(["a.tif", "--out", "o", "--indices", "1,x"])
