"""plugin/batch_inputs.py: a folder on the command line stands for the rasters and products in it."""

from __future__ import annotations

import os

import numpy as np
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
    no_rasters = (r"no \*\.tif, \*\.tiff, \*\.vrt file, no Sentinel-2 product \(\*\.zip, \*\.SAFE\) and no Landsat "
                  r"scene \(\*\.tar\) in it\.")
    with pytest.raises(InputError, match=no_rasters) as caught:
        batch_inputs.expand_inputs([str(tmp_path / "empty")], tmp_path / "out")
    assert "--recursive" in caught.value.hint


def test_main_reports_an_empty_folder_before_loading_any_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert batch.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "has no rasters" in capsys.readouterr().err


def _dn(h: int = 24, w: int = 24):
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


def _landsat(folder):
    from tests.fixtures.band_sets import write_landsat

    rng = np.random.default_rng(3)
    return write_landsat(folder, rng.uniform(0.05, 0.3, (6, 48, 60)))


def test_a_folder_of_band_files_is_one_scene_named_after_its_set(tmp_path):
    """A Landsat Collection 2 download in a folder: its seven SR band files are one raster to map, named after the
    set; its QA_PIXEL and thermal band come with it and are not mapped on their own; a multi-band GeoTIFF beside
    it is mapped as before."""
    from tests.fixtures.band_sets import LANDSAT

    files = _landsat(tmp_path / "downloads")
    _touch(tmp_path / "downloads" / "a.tif")
    left_out = batch_inputs.LeftOut()
    found = batch_inputs.expand_inputs([str(tmp_path / "downloads")], tmp_path / "out", left_out=left_out)
    assert len(found) == 2 and found[1] == str(tmp_path / "downloads" / "a.tif")
    assert os.path.basename(found[0]).startswith(f"{LANDSAT}_SR_B"), found
    assert [os.path.basename(p) for p in left_out.companions] == [f"{LANDSAT}_QA_PIXEL.TIF", f"{LANDSAT}_ST_B10.TIF"]
    assert left_out.lines() == [f"Left out: 2 file(s) that come with a set of band files ({LANDSAT}_QA_PIXEL.TIF, "
                                f"{LANDSAT}_ST_B10.TIF); each set is mapped once, from its band files"]
    jobs = batch_inputs.plan(found, tmp_path / "out")
    assert [os.path.basename(j.output_path) for j in jobs] == [f"{LANDSAT}_SR_flood.tif", "a_flood.tif"]
    assert jobs[0].name == f"{LANDSAT}_SR (7 band files: B1, B2, B3, B4, B5, B6, B7)" and jobs[1].name == "a.tif"
    assert batch_inputs.own_cloud_mask(found[0]) == files["QA_PIXEL"]
    assert batch_inputs.needs_stacking(found[0]) and not batch_inputs.needs_stacking(found[1])


def test_band_files_named_one_by_one_are_one_raster_and_named_files_are_never_left_out(tmp_path):
    """`…_SR_B*.TIF` as a shell expands it: one raster. A file named on the command line is mapped as it is, even
    one that only comes with a set (its error then says why)."""
    files = _landsat(tmp_path / "scene")
    named = [files[f"SR_B{b}"] for b in range(1, 8)] + [files["QA_PIXEL"]]
    left_out = batch_inputs.LeftOut()
    got = batch_inputs.expand_inputs(named, tmp_path / "out", left_out=left_out)
    assert len(got) == 2 and got[1] == files["QA_PIXEL"] and not left_out
    assert batch_inputs.own_cloud_mask(files["QA_PIXEL"]) == ""


def test_band_files_named_by_band_alone_are_named_after_their_folder(tmp_path):
    """Band files as cloud archives serve them (B02.tif, B03.tif, …, SCL.tif in a folder named after the scene)."""
    from tests.fixtures.band_sets import write_band

    scene = tmp_path / "S2B_33TWM_20240501_0_L2A"
    scene.mkdir()
    for band in ("B02", "B03", "B04", "B8A", "B11", "B12"):
        write_band(scene / f"{band}.tif", np.full((8, 8), 1500, np.uint16), 10)
    write_band(scene / "SCL.tif", np.full((4, 4), 4, np.uint8), 20)
    left_out = batch_inputs.LeftOut()
    (found,) = batch_inputs.expand_inputs([str(scene)], tmp_path / "out", left_out=left_out)
    assert [os.path.basename(p) for p in left_out.companions] == ["SCL.tif"]
    assert batch_inputs.output_stem(found) == scene.name
    assert batch_inputs.own_cloud_mask(found) == str(scene / "SCL.tif")


def test_a_folder_of_lone_jp2_files_has_nothing_to_map(tmp_path):
    from tests.fixtures.band_sets import write_band

    write_band(tmp_path / "T33TWM_20240501T100031_TCI_10m.jp2", np.ones((8, 8), np.uint8), 10)
    with pytest.raises(InputError, match="nothing to map") as caught:
        batch_inputs.expand_inputs([str(tmp_path)], tmp_path / "out")
    assert "T33TWM_20240501T100031_TCI_10m.jp2" in caught.value.message


def test_a_product_is_named_after_its_safe_folder_however_it_is_given(tmp_path):
    """The Copernicus Data Space names a download `<product>.SAFE.zip`; its metadata file and band files can be
    given too: each map is `<product>_flood.tif`."""
    from tests.fixtures.sentinel2_safe import NAME, write_l2a

    archive = write_l2a(tmp_path, _dn(), zipped=True)
    renamed = archive.rename(tmp_path / f"{NAME}.SAFE.zip")
    safe = write_l2a(tmp_path / "unzipped", _dn())
    band = next(safe.glob("GRANULE/*/IMG_DATA/R10m/*_B02_10m.jp2"))
    for given in (renamed, safe, safe / "MTD_MSIL2A.xml", band):
        assert batch_inputs.output_stem(str(given)) == NAME, given
    assert batch_inputs.own_cloud_mask(str(band)) == str(safe / "MTD_MSIL2A.xml")


def test_auto_takes_the_local_engine_for_inputs_to_stack_even_where_float16_is_fast():
    from plugin.batch_engine import ENGINE_LOCAL, choose_engine
    from plugin.core.settings import Settings

    choice = choose_engine("auto", Settings(), "gpu", pipeline_for="--clouds")
    assert choice.engine == ENGINE_LOCAL and choice.reason.startswith("--clouds, which the plugin's pipeline does")


def test_the_offline_engine_refuses_band_files_with_the_way_out(tmp_path):
    files = _landsat(tmp_path / "scene")
    with pytest.raises(InputError) as caught:
        batch_offline.run_one(None, batch_inputs.Job(files["SR_B2"], str(tmp_path / "o_flood.tif")), None,
                              str(tmp_path))
    assert "set of band files" in caught.value.message and "--engine local" in caught.value.hint


def test_an_hls_granule_is_one_scene_with_its_fmask_as_cloud_mask(tmp_path):
    """HLS: `HLS.S30.<tile>.<time>.v2.0.B02.tif` … with `….Fmask.tif` and the angle files (SAA, SZA, VAA, VZA)."""
    from tests.fixtures.band_sets import write_band

    granule = "HLS.S30.T33TWM.2024122T100031.v2.0"
    for band in ("B02", "B03", "B04", "B8A", "B11", "B12"):
        write_band(tmp_path / f"{granule}.{band}.tif", np.full((8, 8), 1500, np.int16), 30, nodata=-9999)
    for other in ("Fmask", "SAA", "SZA", "VAA", "VZA"):
        write_band(tmp_path / f"{granule}.{other}.tif", np.zeros((8, 8), np.uint8), 30, nodata=255)
    left_out = batch_inputs.LeftOut()
    (found,) = batch_inputs.expand_inputs([str(tmp_path)], tmp_path / "out", left_out=left_out)
    assert [os.path.basename(p).split(".")[-2] for p in left_out.companions] == ["Fmask", "SAA", "SZA", "VAA", "VZA"]
    assert batch_inputs.output_stem(found) == granule
    assert batch_inputs.own_cloud_mask(found) == str(tmp_path / f"{granule}.Fmask.tif")


def test_a_landsat_bundle_stands_for_the_band_files_inside_it(tmp_path):
    """USGS EarthExplorer serves a Landsat Collection 2 scene as one .tar of its files: in a folder or named, it is
    one raster to map, read inside the archive (/vsitar/), named after its set, its QA_PIXEL its cloud mask. A .tar
    without band files is left out of a folder, and named, it is refused with what it lacks."""
    import tarfile

    from tests.fixtures.band_sets import LANDSAT

    files = _landsat(tmp_path / "scene")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (tmp_path / "out").mkdir()
    bundle = downloads / f"{LANDSAT}.tar"
    with tarfile.open(bundle, "w") as tar:
        for path in files.values():
            tar.add(path, arcname=os.path.basename(path))
    with tarfile.open(downloads / "notes.tar", "w") as tar:
        tar.add(__file__, arcname="notes.txt")
    left_out = batch_inputs.LeftOut()
    (found,) = batch_inputs.expand_inputs([str(downloads)], tmp_path / "out", left_out=left_out)
    member = f"/vsitar/{bundle}/{LANDSAT}_SR_B1.TIF"
    assert found == member and left_out.no_bands == [str(downloads / "notes.tar")] and not left_out.companions
    assert batch_inputs.expand_inputs([str(bundle)], tmp_path / "out") == [member]
    (job,) = batch_inputs.plan([found], tmp_path / "out")
    assert job.input_path == member and os.path.basename(job.output_path) == f"{LANDSAT}_SR_flood.tif"
    batch_inputs.validate(job, None)
    assert batch_inputs.own_cloud_mask(found) == f"/vsitar/{bundle}/{LANDSAT}_QA_PIXEL.TIF"
    (named,) = batch_inputs.plan(batch_inputs.expand_inputs([str(downloads / "notes.tar")], tmp_path / "out"),
                                 tmp_path / "out")
    with pytest.raises(InputError, match="holds no set of band files"):
        batch_inputs.validate(named, None)


def test_a_scene_downloaded_twice_is_mapped_once_from_its_unpacked_copy(tmp_path):
    """A product's .zip kept beside its unpacked .SAFE, a Landsat .tar beside its band files: one map each, from the
    unpacked copy (faster to read), and the line says which download stood for which. Another product of the same
    tile and time (L1C beside L2A) is another scene."""
    import tarfile

    from tests.fixtures.band_sets import LANDSAT
    from tests.fixtures.sentinel2_safe import L1C_NAME, NAME, write_l1c, write_l2a

    downloads = tmp_path / "downloads"
    archive = write_l2a(downloads, _dn(), zipped=True)
    safe = write_l2a(downloads, _dn())
    l1c = write_l1c(downloads, _dn())
    files = _landsat(downloads)
    with tarfile.open(downloads / f"{LANDSAT}.tar", "w") as tar:
        for path in files.values():
            tar.add(path, arcname=os.path.basename(path))
    left_out = batch_inputs.LeftOut()
    found = batch_inputs.expand_inputs([str(downloads)], tmp_path / "out", left_out=left_out)
    assert found == [files["SR_B1"], str(l1c), str(safe)]
    assert left_out.same_scene == [(f"/vsitar/{downloads}/{LANDSAT}.tar/{LANDSAT}_SR_B1.TIF", files["SR_B1"]),
                                   (str(archive), str(safe))]
    assert left_out.lines()[1:] == [
        f"Left out: {LANDSAT}.tar, the same scene as {LANDSAT}_SR (7 band files: B1, B2, B3, B4, B5, B6, B7), which is "
        "mapped", f"Left out: {NAME}.zip, the same scene as {NAME}.SAFE, which is mapped"]
    assert [batch_inputs.output_stem(p) for p in found] == [f"{LANDSAT}_SR", L1C_NAME, NAME]


def test_band_files_of_the_same_name_in_two_folders_are_two_scenes(tmp_path):
    """Sets named by their bands alone (B02.tif, …) in folders of the same name, and Sentinel-2 L1C and L2A band
    files of one tile and time (`T33TWM_20240501T100031_B02.jp2`, `…_B02_10m.jp2`): different scenes, all mapped."""
    from tests.fixtures.band_sets import write_band

    values = np.full((8, 8), 1500, np.uint16)
    names = {"a/scene": "{band}.tif", "b/scene": "{band}.tif", "l1c": "T33TWM_20240501T100031_{band}.tif",
             "l2a": "T33TWM_20240501T100031_{band}_10m.tif"}
    for folder, name in names.items():
        (tmp_path / folder).mkdir(parents=True)
        for band in ("B02", "B03", "B04", "B8A", "B11", "B12"):
            write_band(tmp_path / folder / name.format(band=band), values, 10)
    found = batch_inputs.expand_inputs([str(tmp_path)], tmp_path / "out", recursive=True)
    assert len(found) == 4, found


def test_indices_for_a_set_of_band_files_are_refused_with_the_way_out(tmp_path):
    """--indices picks bands of one raster; the pipeline stacks a band file's set only when no bands are given, so
    a set with --indices would be mapped from its one file."""
    from tests.fixtures.band_sets import LANDSAT

    files = _landsat(tmp_path / "scene")
    (tmp_path / "out").mkdir()
    (job,) = batch_inputs.plan(batch_inputs.expand_inputs([str(tmp_path / "scene")], tmp_path / "out"),
                               tmp_path / "out")
    batch_inputs.validate(job, None)
    with pytest.raises(InputError) as caught:
        batch_inputs.validate(job, [1, 2, 3, 4, 5, 6])
    assert caught.value.message == (f"{LANDSAT}_SR is a set of 7 band files (B1, B2, B3, B4, B5, B6, B7) in "
                                    f"{tmp_path / 'scene'}, and --indices picks the bands of one raster.")
    assert caught.value.hint.startswith("Leave out --indices for band files")
    assert job.input_path == files["SR_B1"]


def test_the_area_is_read_once_and_a_file_without_polygons_is_refused(tmp_path):
    import json

    def geojson(name, geometry):
        path = tmp_path / name
        path.write_text(json.dumps({
            "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
            "features": [{"type": "Feature", "properties": {}, "geometry": geometry}]}))
        return str(path)

    assert batch_inputs.load_area("") is None
    square = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    area = batch_inputs.load_area(geojson("area.geojson", square))
    assert len(area.shapes) == 1 and area.shapes[0]["type"] == "Polygon"
    assert "32633" in area.crs or "UTM zone 33N" in area.crs, area.crs
    with pytest.raises(InputError, match="holds no polygons") as caught:
        batch_inputs.load_area(geojson("points.geojson", {"type": "Point", "coordinates": [1, 2]}))
    assert "buffer the points or lines" in caught.value.hint
    with pytest.raises(InputError, match="does not exist"):
        batch_inputs.load_area(str(tmp_path / "missing.gpkg"))
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(InputError, match="Cannot read the vector file") as caught:
        batch_inputs.load_area(str(tmp_path / "broken.geojson"))
    assert caught.value.hint.startswith("Give the area as a polygon file")


def test_area_and_clouds_take_the_local_engine():
    args = batch.parse_args(["a.tif", "--out", "o", "--area", "flood.gpkg"])
    assert args.area_polygons is None, "read by main, before any engine starts"
    assert batch._pipeline_for([], args) == "--area"
    args = batch.parse_args(["a.tif", "--out", "o", "--area", "flood.gpkg", "--clouds"])
    assert batch._pipeline_for([], args) == "--clouds and --area"
    assert batch._pipeline_for([], batch.parse_args(["a.tif", "--out", "o"])) == ""
    assert batch._pipeline_for([], batch.parse_args(["a.tif", "--out", "o", "--pre-event", "b.tif"])) == "--pre-event"


def test_the_pre_event_image_is_one_scene_whatever_its_download(tmp_path):
    """--pre-event names one raster, product or scene, taken as an input is (a Landsat .tar: the band files inside
    it); a folder of several is refused with the way out. It is the same scene as any download of it."""
    import tarfile

    from scripts.scenes import generate_scene
    from tests.fixtures.band_sets import LANDSAT
    from tests.fixtures.sentinel2_safe import write_l2a

    out = tmp_path / "out"
    downloads = tmp_path / "downloads"
    archive = write_l2a(downloads, _dn(), zipped=True)
    safe = write_l2a(downloads, _dn())
    files = _landsat(downloads)
    after = downloads / "after.tif"
    generate_scene(after, seed=9441, width=32, height=32)
    assert batch_inputs.pre_event_input(str(archive), out, None) == str(archive)
    assert batch_inputs.one_scene(str(archive), str(safe)), "a product's .zip and its .SAFE"
    assert batch_inputs.one_scene(files["SR_B5"], files["SR_B1"]), "two band files of one set"
    assert batch_inputs.one_scene(str(after), str(tmp_path / "downloads" / ".." / "downloads" / "after.tif"))
    assert not batch_inputs.one_scene(str(after), str(safe)) and not batch_inputs.one_scene(files["SR_B1"], str(after))
    bundle = tmp_path / f"{LANDSAT}.tar"
    with tarfile.open(bundle, "w") as tar:
        for path in files.values():
            tar.add(path, arcname=os.path.basename(path))
    member = batch_inputs.pre_event_input(str(bundle), out, None)
    assert member == f"/vsitar/{bundle}/{LANDSAT}_SR_B1.TIF"
    assert batch_inputs.one_scene(member, files["SR_B2"]), "a scene's .tar and its band files unpacked"
    with pytest.raises(InputError) as caught:
        batch_inputs.pre_event_input(str(downloads), out, None)
    assert "holds 3 rasters" in caught.value.message and "the pre-event image is one" in caught.value.message
    assert caught.value.hint == "Give the one raster, product or scene taken before the event."
    with pytest.raises(InputError):
        batch_inputs.pre_event_input(str(tmp_path / "missing.tif"), out, None)


def test_with_clouds_the_pre_event_image_brings_its_own_cloud_mask(tmp_path, monkeypatch):
    """A Landsat scene before the event: its QA_PIXEL is its cloud mask, as the event's own is the event's."""
    from plugin.batch_engine import LocalBatch
    from plugin.core.settings import Settings
    from scripts.scenes import generate_scene

    files = _landsat(tmp_path / "before")
    after = tmp_path / "after.tif"
    generate_scene(after, seed=9442, width=32, height=32)
    asked = []
    monkeypatch.setattr("plugin.core.pipeline.map_floods", lambda request, backend, progress: asked.append(request))
    args = batch.parse_args([str(after), "--out", str(tmp_path / "out"), "--pre-event", files["SR_B1"], "--clouds"])
    args.pre_event_path = files["SR_B1"]
    LocalBatch(Settings()).map(str(after), str(tmp_path / "out" / "after_flood.tif"), args, batch._Console())
    (request,) = asked
    assert request.pre_event_path == files["SR_B1"] and request.pre_event_cloud_mask_path == files["QA_PIXEL"]
    args.clouds = False
    LocalBatch(Settings()).map(str(after), str(tmp_path / "out" / "after_flood.tif"), args, batch._Console())
    assert asked[1].pre_event_path == files["SR_B1"] and asked[1].pre_event_cloud_mask_path == ""
