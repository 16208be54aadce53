"""map_floods() with an area (EXTENT, MASK polygons, CLOUD_MASK) against the programmable fake server: what is
sent, what is written, and that nothing else is. The real model on real servers is tests/qgis/test_area_real.py.
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from plugin.core.errors import InputError, OutputError, TransportUnsupported
from plugin.core.layer_nodata import NodataRange
from plugin.core.pipeline import map_floods
from tests.fixtures.landsat_values import as_collection2
from tests.fixtures.progress import Recorder
from tests.fixtures.world import image_answer, write_scene

X0, Y0, PX = 500000, 5000000, 20  # the World's scene: 80x64 px, water (low NIR) in rows 0-31


def extent(c0, r0, c1, r1):
    """The extent of pixels [c0, c1) x [r0, r1) of the scene, as (xmin, ymin, xmax, ymax)."""
    return X0 + c0 * PX, Y0 - r1 * PX, X0 + c1 * PX, Y0 - r0 * PX


def box(c0, r0, c1, r1, hole=None):
    xmin, ymin, xmax, ymax = extent(c0, r0, c1, r1)
    rings = [[(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)]]
    if hole:
        a, b, c, d = extent(*hole)
        rings.append([(a, b), (c, b), (c, d), (a, d), (a, b)])
    return {"type": "Polygon", "coordinates": rings}


def grid(path):
    with rasterio.open(path) as ds:
        return ds.width, ds.height, ds.transform, ds.crs


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def nothing_left(world):
    assert os.listdir(world.out_dir) == [] and os.listdir(tempfile.gettempdir()) == []


# ------------------------------------------------------------------------------------------------ image
def test_image_extent_sends_a_copy_of_the_window_and_writes_the_cut_grid(world):
    seen = []

    def server(n, body):
        path = body["data"]["data"]
        with rasterio.open(path) as ds:
            seen.append((path, ds.width, ds.height, ds.count, ds.transform))
        return image_answer(body)

    world.fault = server
    progress = Recorder()
    result = map_floods(world.request(extent=extent(10, 20, 50, 44)), world.client(), progress)
    (path, width, height, count, transform), = seen
    assert re.fullmatch(r"\.floodmapper-input\.\w{8}\.part\.tif", os.path.basename(path))
    assert os.path.dirname(path) == tempfile.gettempdir() and not os.path.exists(path)  # removed afterwards
    assert (width, height, count) == (40, 24, 6) and world.jobs()[0].json()["data"]["indices"] == list(range(6))
    assert grid(world.output)[:3] == (40, 24, from_origin(X0 + 10 * PX, Y0 - 20 * PX, PX, PX)) == (
        width, height, transform)
    got = read(world.output)
    assert (got[:12] == 1).all() and (got[12:] == 0).all()  # rows 20-31 of the scene are water
    assert (result.water_pixels, result.valid_pixels) == (12 * 40, 24 * 40)
    assert any(m.startswith("Area: 40×24 px from pixel (10, 20)") for m in progress.infos), progress.infos
    assert os.listdir(world.out_dir) == ["flood.tif"] and os.listdir(tempfile.gettempdir()) == []


def test_image_mask_with_a_hole_is_nodata_outside_the_ring(world):
    result = map_floods(world.request(mask_polygons=[box(10, 10, 70, 50, hole=(30, 20, 50, 40))]), world.client())
    got = read(world.output)
    assert got.shape == (40, 60)
    expected = np.ones((40, 60), bool)
    expected[10:30, 20:40] = False
    np.testing.assert_array_equal(got != 255, expected)
    assert result.valid_pixels == int(expected.sum())


def test_image_cloud_mask_on_the_whole_raster_reads_the_input_itself(world):
    scl = np.full((16, 20), 4, np.uint8)  # 80 m cells: 4x4 pixels each
    scl[0:2, 0:5] = 9
    cloud = world.tmp / "scl.tif"
    with rasterio.open(cloud, "w", driver="GTiff", width=20, height=16, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(X0, Y0, 80, 80)) as dst:
        dst.write(scl, 1)
    result = map_floods(world.request(cloud_mask_path=str(cloud)), world.client())
    assert world.jobs()[0].json()["data"]["data"] == os.path.abspath(world.input)  # no copy needed
    got = read(world.output)
    assert (got[:8, :20] == 255).all() and (got[8:] != 255).all() and (got[:8, 20:] != 255).all()
    assert result.cloud_pixels == 8 * 20 and result.cloud_fraction == pytest.approx(160 / (80 * 64))
    assert result.valid_pixels == 80 * 64 - 160


def test_image_extent_to_a_remote_server_without_a_shared_folder_is_refused_first(world):
    with pytest.raises(TransportUnsupported, match="only an area of the raster") as err:
        map_floods(world.request(server_can_read_local_files=False, extent=extent(0, 0, 40, 40)), world.client())
    assert "tensor transport" in err.value.hint
    assert world.jobs() == []
    nothing_left(world)


def test_image_copy_goes_to_the_mapped_folder(world):
    shared = world.tmp / "shared"
    shared.mkdir()
    seen = []

    def server(n, body):  # the "server" sees the shared folder under /srv/data
        seen.append(body["data"]["data"])
        body["data"]["data"] = body["data"]["data"].replace("/srv/data", str(shared))
        return image_answer(body)

    world.fault = server
    map_floods(world.request(server_can_read_local_files=False, path_map_local=str(shared),
                             path_map_server="/srv/data", extent=extent(0, 0, 40, 40)), world.client())
    assert re.fullmatch(r"/srv/data/\.floodmapper-input\.\w{8}\.part\.tif", seen[0])
    assert os.listdir(shared) == [] and grid(world.output)[:2] == (40, 40)


def write_vrt(world) -> str:
    """The scene as six single-band files stacked in a VRT (as gdalbuildvrt -separate writes it)."""
    bands = []
    for i in range(6):
        path = world.tmp / "in" / f"band{i}.tif"
        with rasterio.open(world.input) as src, rasterio.open(
                path, "w", driver="GTiff", width=80, height=64, count=1, dtype="uint16", crs=src.crs,
                transform=src.transform, nodata=0) as dst:
            dst.write(src.read(i + 1), 1)
            dst.descriptions = (src.descriptions[i],)
        bands.append(path.name)
    sources = "".join(f'<VRTRasterBand dataType="UInt16" band="{i + 1}"><NoDataValue>0</NoDataValue><SimpleSource>'
                      f'<SourceFilename relativeToVRT="1">{name}</SourceFilename><SourceBand>1</SourceBand>'
                      "</SimpleSource></VRTRasterBand>" for i, name in enumerate(bands))
    vrt = world.tmp / "in" / "stack.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="80" rasterYSize="64"><SRS>EPSG:32633</SRS><GeoTransform>{X0}, {PX}, '
                   f"0, {Y0}, 0, -{PX}</GeoTransform>{sources}</VRTDataset>")
    return str(vrt)


def test_image_vrt_is_sent_as_a_geotiff_copy(world):
    vrt = write_vrt(world)
    progress = Recorder()
    map_floods(world.request(input_path=vrt), world.client(), progress)
    sent = world.jobs()[0].json()["data"]["data"]
    assert sent.endswith(".part.tif") and not os.path.exists(sent)
    assert any("virtual raster" in m for m in progress.infos)
    assert (read(world.output)[:32] == 1).all() and (read(world.output)[32:] == 0).all()


def test_image_vrt_to_a_remote_server_is_told_to_use_the_tensor_transport(world):
    with pytest.raises(TransportUnsupported, match="virtual raster") as err:
        map_floods(world.request(input_path=write_vrt(world), server_can_read_local_files=False), world.client())
    assert "tensor transport" in err.value.hint
    assert world.jobs() == []
    nothing_left(world)


def test_image_raster_inside_a_zip_is_sent_as_a_geotiff_copy(world):
    """A `/vsizip/` member (a band stack inside a downloaded zip) is no file the server can open by path."""
    import zipfile

    archive = world.tmp / "in" / "download.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(world.input, "scene/stack.tif")
    progress = Recorder()
    map_floods(world.request(input_path=f"/vsizip/{archive}/scene/stack.tif"), world.client(), progress)
    sent = world.jobs()[0].json()["data"]["data"]
    assert sent.endswith(".part.tif") and not os.path.exists(sent)
    assert any("not a file of its own" in m for m in progress.infos)
    assert (read(world.output)[:32] == 1).all() and (read(world.output)[32:] == 0).all()
    with pytest.raises(TransportUnsupported, match="not a file of its own") as err:
        map_floods(world.request(input_path=f"/vsizip/{archive}/scene/stack.tif", server_can_read_local_files=False),
                   world.client())
    assert "tensor transport" in err.value.hint


def test_the_cloud_mask_is_never_written_over(world):
    cloud = world.tmp / "in" / "clouds.tif"
    with rasterio.open(cloud, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(X0, Y0, 200, 200)) as dst:
        dst.write(np.zeros((8, 8), np.uint8), 1)
    before = cloud.read_bytes()
    with pytest.raises(OutputError, match="is the input"):
        map_floods(world.request(cloud_mask_path=str(cloud), output_path=str(cloud)), world.client())
    assert cloud.read_bytes() == before and world.srv.requests == []


@pytest.mark.parametrize("request_fields, message", [
    ({"extent": extent(100, 100, 120, 120)}, "does not overlap the raster"),
    ({"extent": (X0, Y0, X0, Y0 + 10)}, "empty"),
    ({"mask_polygons": []}, "no polygons"),
    ({"mask_polygons": [box(100, 100, 120, 120)]}, "do not overlap the raster"),
    ({"cloud_values": ("3", "x")}, "CLOUD_VALUES"),
])
def test_bad_areas_fail_before_any_request_and_write_nothing(world, request_fields, message):
    with pytest.raises(InputError, match=message):
        map_floods(world.request(**request_fields), world.client())
    assert world.srv.requests == []
    nothing_left(world)


# ----------------------------------------------------------------------------------------------- tensor
def test_tensor_extent_maps_exactly_like_the_raster_cut_beforehand(tensor_world):
    world = tensor_world
    with rasterio.open(world.input) as src:
        cut = world.tmp / "in" / "cut.tif"
        window = rasterio.windows.Window(10, 14, 50, 40)
        profile = dict(src.profile, width=50, height=40, transform=src.window_transform(window))
        with rasterio.open(cut, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.descriptions = src.descriptions
    map_floods(world.request(extent=extent(10, 14, 60, 54)), world.client())
    area_map, area_probability = read(world.output), read(world.probability)
    requests_for_area = len(world.jobs())
    world.srv.requests.clear()
    map_floods(world.request(input_path=str(cut)), world.client())
    np.testing.assert_array_equal(area_map, read(world.output))
    np.testing.assert_array_equal(area_probability, read(world.probability))
    assert grid(world.output) == grid(str(cut)) and requests_for_area == len(world.jobs()) == 4


def test_tensor_mask_sends_only_the_tiles_it_touches_and_counts_only_those(tensor_world):
    world = tensor_world
    progress = Recorder()
    # the window is the polygons' box, pixels 2-78 x 2-60: 3x2 tiles of 32 (stride 28); the polygons touch
    # the first tile and the last only
    polygons = [box(2, 2, 12, 12), box(70, 50, 78, 60)]
    result = map_floods(world.request(mask_polygons=polygons), world.client(), progress)
    assert len(world.jobs()) == 2
    got = read(world.output)
    assert got.shape == (58, 76)
    inside = np.zeros(got.shape, bool)
    inside[0:10, 0:10] = inside[48:58, 68:76] = True
    np.testing.assert_array_equal(got != 255, inside)
    assert result.valid_pixels == 100 + 80
    text = "\n".join(progress.infos)
    assert "6 tiles of 32x32 (overlap 4 px), 2 to send (4 with nothing to map are not sent)" in text, text
    assert "Tile 2/2" in text and not re.search(r"Tile \d+/6", text)


def test_tensor_tiles_wholly_nodata_are_neither_sent_nor_counted(tensor_world):
    world = tensor_world
    data = np.full((6, 64, 80), 2000, np.uint16)
    data[:, :, :60] = 0  # only the last column of tiles (x 56-80) has data, in x 60-80
    inp = write_scene(world.tmp / "in" / "edge.tif", fill=data)
    progress = Recorder()
    map_floods(world.request(input_path=inp), world.client(), progress)
    assert len(world.jobs()) == 3
    assert any("3 to send (6 with nothing to map are not sent)" in m for m in progress.infos)
    assert any(m.startswith("Tile 3/3") for m in progress.infos)


def test_tensor_a_tile_with_data_in_the_first_band_only_is_read_but_not_sent(tensor_world):
    """The plan reads the first band alone: such a tile is counted at first, found empty when read, and leaves the
    count; the progress ends at the tiles sent."""
    world = tensor_world
    data = np.full((6, 64, 80), 2000, np.uint16)
    data[:, :, :60] = 0
    data[0, 5, 5] = 2000  # the first tile has data in the first band, and in no other
    inp = write_scene(world.tmp / "in" / "first-band.tif", fill=data)
    progress = Recorder()
    map_floods(world.request(input_path=inp), world.client(), progress)
    assert len(world.jobs()) == 3
    assert any("4 to send (5 with nothing to map are not sent)" in m for m in progress.infos)
    assert any(m.startswith("Tile 3/3") for m in progress.infos), progress.infos
    with rasterio.open(world.output) as out:
        assert (out.read(1)[:, :60] == 255).all()  # no data there, in the map either


def record_tiles(world) -> list:
    """The tensors the fake server is sent, tile by tile (it answers them as usual)."""
    from tests.fixtures.fake_vllm import decode_tensor

    sent = []

    def server(n, body):
        sent.append(decode_tensor(body["messages"][0]["content"][0]["image_embeds"]["pixel_values"])[0])
        return world.tensor_answer(body)

    world.fault = server
    return sent


def test_tensor_cloud_pixels_are_nodata_and_zero_in_the_tiles(tensor_world):
    world = tensor_world
    sent = record_tiles(world)
    ones = np.zeros((64, 80), np.uint8)
    ones[:, :32] = 1  # the first column of tiles (x 0-32) is all cloud; the second (x 28-60) starts with 4 px
    cloud = world.tmp / "clouds.tif"
    with rasterio.open(cloud, "w", driver="GTiff", width=80, height=64, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(X0, Y0, PX, PX)) as dst:
        dst.write(ones, 1)
    result = map_floods(world.request(cloud_mask_path=str(cloud), cloud_values=(1,)), world.client())
    assert result.cloud_pixels == 32 * 64 and (read(world.output)[:, :32] == 255).all()
    assert len(sent) == 6
    assert sum(bool((tile[:, :, :4] == 0).all()) for tile in sent) == 3  # cloud pixels reach the model as 0


# ------------------------------------------------------------------- the QGIS layer's additional no data values
def fill_edge(world, name="edge.tif"):
    """The scene with columns 60-79 at 65535 in every band: an undeclared fill beside the data (the raster's
    nodata is 0)."""
    with rasterio.open(world.input) as src:
        data = src.read()
    data[:, :, 60:] = 65535
    return write_scene(world.tmp / "in" / name, fill=data)


EDGE = tuple(NodataRange(b, 65535, 65535) for b in range(1, 7))


@pytest.mark.parametrize("kind", ["image", "tensor"])
def test_the_layers_no_data_values_are_nodata_in_the_map(world, kind):
    world.kind = kind
    inp = fill_edge(world)
    mapped = map_floods(world.request(input_path=inp), world.client())
    assert (read(world.output)[:, 60:] != 255).all() and mapped.valid_pixels == 80 * 64  # the file's own nodata
    requests = len(world.srv.requests)
    world.srv.requests.clear()
    progress = Recorder()
    result = map_floods(world.request(input_path=inp, layer_nodata=EDGE), world.client(), progress)
    got = read(world.output)
    assert (got[:, 60:] == 255).all() and (got[:, :60] != 255).all()
    assert result.valid_pixels == 60 * 64
    assert any("additional no data values (band 1: 65535; band 2: 65535" in m and f"leave out {20 * 64} of" in m
               for m in progress.infos), progress.infos
    if kind == "tensor":  # tiles of 32 with stride 28 over 80 px: the last column (x 56-80) has 4 px of data
        assert len(world.srv.requests) == requests


def test_the_layers_no_data_values_reach_the_model_as_zero_and_spare_tiles_wholly_covered(tensor_world):
    world = tensor_world
    sent = record_tiles(world)
    with rasterio.open(world.input) as src:
        data = src.read()
    data[:, :, 28:] = 65535  # tiles start at x 0, 28, 56: only the first column of tiles has data
    inp = write_scene(world.tmp / "in" / "wide_edge.tif", fill=data)
    result = map_floods(world.request(input_path=inp, layer_nodata=EDGE), world.client())
    assert len(sent) == 3 and result.valid_pixels == 28 * 64
    assert all((tile[:, :, 28:] == 0).all() for tile in sent)  # normalised: the mean, as for any nodata


def test_a_range_on_a_band_the_model_does_not_use_changes_nothing(world):
    inp = fill_edge(world)
    result = map_floods(world.request(input_path=inp, bands=[1, 2, 3, 4, 5, 6],
                                      layer_nodata=(NodataRange(7, 0, 65535),)), world.client())
    assert result.valid_pixels == 80 * 64


def test_an_area_left_all_nodata_by_the_layers_values_fails_before_any_mapping_request(world):
    inp = fill_edge(world)
    with pytest.raises(InputError, match=r"counting the layer's additional no data values \(band 1: 65535;.*"
                                         r"Layer Properties ▸ Transparency"):
        map_floods(world.request(input_path=inp, extent=extent(62, 0, 80, 20), layer_nodata=EDGE), world.client())
    assert world.jobs() == []  # the server was asked what it serves, and given nothing to map
    nothing_left(world)


# ------------------------------------------------------------------------------------------ flood extent
@pytest.mark.parametrize("kind", ["image", "tensor"])
def test_a_pre_event_image_is_mapped_over_the_same_area_only(world, kind):
    """EXTENT with PRE_EVENT: both images mapped over the event's window only; the flood map is on its grid. The
    event's cloud mask is the event's: the pre-event image's copy is the whole window, clouds or not."""
    world.kind = kind
    with rasterio.open(world.input) as src:
        data = src.read()
    data[3, 16:32, :] = 9000  # before the flood: water (low NIR) only in rows 0-15
    pre = write_scene(world.tmp / "in" / "pre.tif", fill=data)
    ones = np.zeros((64, 80), np.uint8)
    ones[40:, :] = 1
    cloud = world.tmp / "clouds.tif"
    with rasterio.open(cloud, "w", driver="GTiff", width=80, height=64, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(X0, Y0, PX, PX)) as dst:
        dst.write(ones, 1)
    sizes = []

    def server(n, body):
        if "data" in body:
            with rasterio.open(body["data"]["data"]) as ds:
                sizes.append((ds.width, ds.height))
        return None

    world.fault = server
    result = map_floods(world.request(pre_event_path=pre, extent=extent(10, 8, 70, 48), cloud_mask_path=str(cloud),
                                      cloud_values=(1,)), world.client())
    got = read(world.output)
    assert got.shape == (40, 60) and grid(world.output)[2] == from_origin(X0 + 10 * PX, Y0 - 8 * PX, PX, PX)
    assert (got[:8] == 2).all() and (got[8:24] == 1).all()  # rows 8-15 water before too; 16-31 flood
    # rows 32-39 are the same pixels in both images: no flood (the fake tensor model finds some water there)
    assert set(np.unique(got[24:32])) <= ({0} if kind == "image" else {0, 2})
    assert (got[32:] == 255).all()  # the event's clouds (rows 40-47)
    assert result.cloud_pixels == 8 * 60 and result.flood_pixels == int((got == 1).sum()) == 16 * 60
    if kind == "image":
        assert sizes == [(60, 40), (60, 40)]
    else:  # 60x40 in tiles of 32 with 4 px overlap: 2x2 tiles for each image (none wholly cloud)
        assert len(world.jobs()) == 8
    assert os.listdir(tempfile.gettempdir()) == []


def test_the_pre_event_layers_no_data_values_apply_to_the_pre_event_image_only(tensor_world):
    world = tensor_world
    with rasterio.open(world.input) as src:
        data = src.read()
    data[:, :, 28:] = 65535  # the pre-event image has data in the first column of tiles only (x 0-28)
    pre = write_scene(world.tmp / "in" / "pre_edge.tif", fill=data)
    result = map_floods(world.request(pre_event_path=pre, pre_event_layer_nodata=EDGE), world.client())
    assert len(world.jobs()) == 9 + 3  # the event's 3x3 tiles, the pre-event's first column of tiles
    assert (read(world.output) != 255).all() and result.valid_pixels == 80 * 64  # the event's pixels all count


def write_clouds(path, rows: tuple[int, int], value: int = 3, count: int = 1) -> str:
    """An SCL-like cloud raster on the scene's grid: `value` in rows [rows[0], rows[1]), 4 (vegetation) elsewhere."""
    scl = np.full((count, 64, 80), 4, np.uint8)
    scl[:, rows[0]:rows[1]] = value
    with rasterio.open(path, "w", driver="GTiff", width=80, height=64, count=count, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(X0, Y0, PX, PX)) as dst:
        dst.write(scl)
    return str(path)


def pre_event_with_shadow(world) -> np.ndarray:
    """The scene before the flood: water (low NIR) in rows 0-15, land in rows 24-31, and over rows 16-23 a cloud
    shadow as dark as water in the NIR."""
    with rasterio.open(world.input) as src:
        data = src.read()
    data[3, 24:32, :] = 9000
    return data


@pytest.mark.parametrize("kind", ["image", "tensor"])
def test_the_pre_event_images_clouds_give_no_reference_water(world, kind):
    world.kind = kind
    pre = write_scene(world.tmp / "in" / "pre.tif", fill=pre_event_with_shadow(world))
    shadow = write_clouds(world.tmp / "in" / "pre_SCL.tif", (16, 24), value=3)  # SCL 3: cloud shadow
    unmasked = map_floods(world.request(pre_event_path=pre), world.client())
    assert (read(world.output)[16:24] == 2).all()  # the shadow read as water: flood taken for permanent water
    progress = Recorder()
    result = map_floods(world.request(pre_event_path=pre, pre_event_cloud_mask_path=shadow), world.client(), progress)
    got = read(world.output)
    assert (got[:16] == 2).all() and (got[16:32] == 1).all()
    assert result.flood_pixels == unmasked.flood_pixels + 8 * 80
    assert result.no_reference_pixels == 8 * 80 and unmasked.no_reference_pixels == 0
    assert result.cloud_pixels == 0 and result.valid_pixels == 80 * 64  # the event's figures: it has no clouds
    assert any(m.startswith("Pre-event image: Cloud mask: 640 of the area's 5120 pixels") for m in progress.infos)
    assert any("pre_SCL.tif') give no reference water" in m for m in progress.infos)
    assert os.listdir(tempfile.gettempdir()) == []


def test_without_a_pre_event_cloud_mask_the_log_says_its_clouds_are_mapped(tensor_world):
    world = tensor_world
    pre = write_scene(world.tmp / "in" / "pre.tif", fill=pre_event_with_shadow(world))
    clouds = write_clouds(world.tmp / "in" / "SCL.tif", (40, 48), value=9)
    progress = Recorder()
    result = map_floods(world.request(pre_event_path=pre, cloud_mask_path=clouds), world.client(), progress)
    assert result.cloud_pixels == 8 * 80 and result.no_reference_pixels == 0  # the event's clouds only
    assert any("no cloud mask (PRE_EVENT_CLOUD_MASK)" in m for m in progress.infos)


def with_scl_band(path, data: np.ndarray, scl_rows: tuple[int, int]) -> str:
    """The six described bands and an SCL band (cloud shadow in `scl_rows`), as an Earth Engine export has it."""
    scl = np.full((64, 80), 4, np.uint16)
    scl[scl_rows[0]:scl_rows[1]] = 3
    with rasterio.open(path, "w", driver="GTiff", width=80, height=64, count=7, dtype="uint16", crs="EPSG:32633",
                       transform=from_origin(X0, Y0, PX, PX), nodata=0) as dst:
        dst.write(np.concatenate([data, scl[None]]))
        dst.descriptions = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2", "SCL")
    return str(path)


def test_an_event_image_that_is_its_own_cloud_mask_makes_the_pre_event_image_its_own_too(tensor_world):
    world = tensor_world
    with rasterio.open(world.input) as src:
        event = with_scl_band(world.tmp / "in" / "event7.tif", src.read(), (0, 0))  # no clouds
    pre = with_scl_band(world.tmp / "in" / "pre7.tif", pre_event_with_shadow(world), (16, 24))
    progress = Recorder()
    result = map_floods(world.request(input_path=event, cloud_mask_path=event, pre_event_path=pre), world.client(),
                        progress)
    got = read(world.output)
    assert (got[:16] == 2).all() and (got[16:32] == 1).all()
    assert result.cloud_pixels == 0 and result.no_reference_pixels == 8 * 80
    assert any(m == "Pre-event image: It is its own cloud mask (band 7, SCL): its clouds give no reference water"
               for m in progress.infos), progress.infos


@pytest.mark.parametrize("qa_band", [False, True])
def test_a_landsat_pre_event_image_is_its_own_cloud_mask_only_with_a_cloud_band(tensor_world, qa_band):
    """The event image is its own cloud mask (SCL band); the pre-event image is a Landsat Collection 2 export, with
    or without its QA_PIXEL band (cloud shadow, bit 4, over rows 16-23)."""
    world = tensor_world
    with rasterio.open(world.input) as src:
        event = with_scl_band(world.tmp / "in" / "event7.tif", src.read(), (0, 0))
    stored = as_collection2(pre_event_with_shadow(world) * 1e-4)
    names = ["SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"]
    if qa_band:
        qa = np.full((1, 64, 80), 21824, np.uint16)
        qa[0, 16:24] |= 1 << 4
        stored, names = np.concatenate([stored, qa]), names + ["QA_PIXEL"]
    pre = world.tmp / "in" / "landsat.tif"
    with rasterio.open(pre, "w", driver="GTiff", width=80, height=64, count=len(names), dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(X0, Y0, PX, PX), nodata=0) as dst:
        dst.write(stored)
        dst.descriptions = names
    progress = Recorder()
    result = map_floods(world.request(input_path=event, cloud_mask_path=event, pre_event_path=str(pre)),
                        world.client(), progress)
    got = read(world.output)
    assert any(m.startswith("The pre-event image is another product") for m in progress.infos)
    if qa_band:
        assert (got[16:24] == 1).all() and result.no_reference_pixels == 8 * 80
        assert any("It is its own cloud mask (Landsat QA_PIXEL bits 1-4" in m for m in progress.infos)
        assert any("Landsat QA_PIXEL bits 1-4" in m and m.startswith("Pre-event image: ") for m in progress.infos)
    else:  # its shadow is read as water: the flood there becomes permanent water, and the log says why
        assert (got[16:24] == 2).all() and result.no_reference_pixels == 0
        assert any("It has no cloud mask (PRE_EVENT_CLOUD_MASK)" in m for m in progress.infos)


def test_a_pre_event_export_with_a_cloud_band_is_its_own_cloud_mask_beside_an_event_scl_file(tensor_world):
    world = tensor_world
    clouds = write_clouds(world.tmp / "in" / "SCL.tif", (40, 48), value=9)  # the event's own SCL file
    pre = with_scl_band(world.tmp / "in" / "pre7.tif", pre_event_with_shadow(world), (16, 24))
    progress = Recorder()
    result = map_floods(world.request(cloud_mask_path=clouds, pre_event_path=pre), world.client(), progress)
    got = read(world.output)
    assert (got[16:24] == 1).all() and (got[40:48] == 255).all()
    assert result.cloud_pixels == 8 * 80 and result.no_reference_pixels == 8 * 80
    assert any(m.startswith("Pre-event image: It is its own cloud mask (band 7, SCL)") for m in progress.infos)


def test_a_pre_event_image_all_cloud_fails_naming_it_and_writes_nothing(tensor_world):
    world = tensor_world
    pre = write_scene(world.tmp / "in" / "pre.tif", fill=pre_event_with_shadow(world))
    overcast = write_clouds(world.tmp / "in" / "pre_SCL.tif", (0, 64), value=9)
    with pytest.raises(InputError, match=r"^The pre-event image '.*pre\.tif': Every pixel of the area with data is "
                                         "cloud"):
        map_floods(world.request(pre_event_path=pre, pre_event_cloud_mask_path=overcast), world.client())
    nothing_left(world)


def test_the_pre_event_cloud_mask_is_never_written_over(world):
    pre = write_scene(world.tmp / "in" / "pre.tif", fill=pre_event_with_shadow(world))
    clouds = write_clouds(world.tmp / "in" / "pre_SCL.tif", (16, 24))
    before = open(clouds, "rb").read()
    with pytest.raises(OutputError, match="is the input"):
        map_floods(world.request(pre_event_path=pre, pre_event_cloud_mask_path=clouds, output_path=clouds),
                   world.client())
    assert open(clouds, "rb").read() == before and world.srv.requests == []
