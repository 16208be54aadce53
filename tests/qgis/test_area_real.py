"""floodmapper:map_floods with an area in real QGIS: EXTENT in another CRS, a MASK polygon with a hole, a 20 m
SCL-like CLOUD_MASK and an L1C MSK_CLASSI_B00.jp2 over a 10 m scene, and a VRT of six band files at 10 m and
20 m (with a zero-filled swath edge and no nodata value declared) built by QGIS's own gdal:buildvirtualraster;
each on the real demo model, image-to-image and tensor-to-tensor, with the water IoU against the generator's
truth inside the area; a VRT of Landsat Collection 2 band files, read with Landsat's band numbers and scaling; a
VRT of Landsat Level-1 band files, calibrated by their MTL file; a raster whose bands carry their own scale and
offset; a project layer whose additional no data value (Layer Properties ▸ Transparency) marks a fill the file
does not.
Bad area parameters fail with a clear message and write nothing (those need no server)."""

from __future__ import annotations

import math
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin, rowcol, xy
from rasterio.warp import transform as warp_transform

from plugin.core.layer_nodata import NodataRange
from scripts.scenes import generate_scene, iou, synthesize
from tests.fixtures.landsat_mtl import write_mtl
from tests.fixtures.processing_log import run_logged

ROOT = Path(__file__).resolve().parents[2]
MIN_IOU = 0.85  # as tests/qgis/test_map_floods_real.py: the demo model's gate on whole scenes
TRANSPORTS = {"image": 1, "tensor": 2}


def _server(request, transport):
    return request.getfixturevalue("vllm_server" if transport == "image" else "vllm_tensor_server")


def _params(src, out, server, transport, **extra):
    params = {"INPUT": str(src), "BACKEND": 0, "SERVER_URL": server.url, "TRANSPORT": TRANSPORTS[transport],
              "OUTPUT": str(out)}
    if transport == "tensor":
        params["MODEL_SPEC"] = str(ROOT / "resources" / "demo_model")
    params.update(extra)
    return params


def _run(params):
    """Map floods and its log, layers given by id as the dialog gives them."""
    return run_logged("floodmapper:map_floods", params, project=True)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.crs, ds.width, ds.height


def _window_of(out_transform, in_transform):
    """(col, row) of the output's origin on the input's grid: integers when the grids are aligned."""
    row, col = rowcol(in_transform, out_transform.c, out_transform.f, op=float)
    return col, row


# ------------------------------------------------------------------------------------------------ extent
@pytest.mark.vllm
@pytest.mark.parametrize("transport", ["image", "tensor"])
def test_extent_in_another_crs_cuts_the_input_grid(provider_loaded, request, tmp_path, transport):
    server = _server(request, transport)
    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=9301, width=512, height=448)  # UTM 33N, 10 m
    with rasterio.open(src) as ds:
        t_in = ds.transform
    # an extent in lon/lat over pixels ~(90..350, 60..300) of the scene
    xs, ys = xy(t_in, [300.2, 60.7], [90.3, 350.6], offset="ul")
    (lon0, lon1), (lat0, lat1) = warp_transform("EPSG:32633", "EPSG:4326", list(xs), list(ys))
    out = tmp_path / "flood.tif"
    result, log = _run(_params(src, out, server, transport,
                               EXTENT=f"{lon0!r},{lon1!r},{lat0!r},{lat1!r} [EPSG:4326]"))
    classes, t_out, crs, width, height = _read(out)
    col, row = _window_of(t_out, t_in)
    assert (t_out.a, t_out.e, crs.to_epsg()) == (t_in.a, t_in.e, 32633)
    assert col == pytest.approx(round(col), abs=1e-6) and row == pytest.approx(round(row), abs=1e-6)  # aligned
    col, row = round(col), round(row)
    # size exact: every pixel the extent touches (its edges densified on the raster's CRS), and no other
    lons = np.concatenate([np.linspace(lon0, lon1, 200), np.full(200, lon1), np.linspace(lon1, lon0, 200),
                           np.full(200, lon0)])
    lats = np.concatenate([np.full(200, lat0), np.linspace(lat0, lat1, 200), np.full(200, lat1),
                           np.linspace(lat1, lat0, 200)])
    ex, ey = warp_transform("EPSG:4326", "EPSG:32633", list(lons), list(lats))
    rows, cols = (np.asarray(v) for v in rowcol(t_in, ex, ey, op=float))
    assert (col, row) == (math.floor(cols.min()), math.floor(rows.min()))
    assert (col + width, row + height) == (math.ceil(cols.max()), math.ceil(rows.max()))
    assert result["VALID_PIXELS"] == width * height and "Area: " in log
    assert iou(classes, truth[row:row + height, col:col + width]) >= MIN_IOU
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -------------------------------------------------------------------------------------------------- mask
def _polygon_layer(wkt: str, crs: str):
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer(f"Polygon?crs={crs}", "mask", "memory")
    if wkt:
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        layer.dataProvider().addFeatures([feature])
    return layer


@pytest.mark.vllm
@pytest.mark.parametrize("transport", ["image", "tensor"])
def test_mask_polygon_with_a_hole(provider_loaded, request, tmp_path, transport):
    from qgis.core import QgsProject
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    server = _server(request, transport)
    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=9302, width=640, height=512)
    with rasterio.open(src) as ds:
        t_in = ds.transform
    # a triangle (the window is its box: 580x460 px, 3x2 demo tiles of 256 px, one wholly outside it) with a
    # rectangular hole
    ring = list(zip(*xy(t_in, [20, 20, 480, 20], [20, 600, 20, 20], offset="ul")))
    hole = list(zip(*xy(t_in, [100, 100, 200, 200, 100], [120, 260, 260, 120, 120], offset="ul")))
    utm = {"type": "Polygon", "coordinates": [ring, hole]}
    lonlat = transform_geom("EPSG:32633", "EPSG:4326", utm)
    wkt = "POLYGON(" + ",".join("(" + ",".join(f"{x!r} {y!r}" for x, y in part) + ")"
                                for part in lonlat["coordinates"]) + ")"
    layer = _polygon_layer(wkt, "EPSG:4326")
    QgsProject.instance().addMapLayer(layer)
    try:
        out = tmp_path / "flood.tif"
        result, log = _run(_params(src, out, server, transport, MASK=layer.id()))
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    classes, t_out, _, width, height = _read(out)
    col, row = (round(v) for v in _window_of(t_out, t_in))
    assert abs(col - 20) <= 1 and abs(row - 20) <= 1 and abs(width - 580) <= 2 and abs(height - 460) <= 2
    inside = rasterize([utm], out_shape=(height, width), transform=t_out).astype(bool)
    mapped = classes != 255
    assert (mapped != inside).sum() <= 0.005 * inside.sum()  # only pixels on the edge may differ (reprojection)
    assert not mapped[100 - row + 2:200 - row - 2, 120 - col + 2:260 - col - 2].any()  # the hole
    assert result["VALID_PIXELS"] == int(mapped.sum())
    assert iou(np.where(mapped, classes, 0), np.where(mapped, truth[row:row + height, col:col + width], 255)) \
        >= MIN_IOU
    if transport == "tensor":  # the tiles in the hole and outside the ring get no request
        assert "6 tiles of 256x256 (overlap 32 px), 5 to send (1 with nothing to map are not sent)" in log, log
        assert "Tile 5/5" in log and "5 requests" in log


# ------------------------------------------------------------------------------------------------ clouds
@pytest.mark.vllm
@pytest.mark.parametrize("transport", ["image", "tensor"])
def test_scl_cloud_mask_at_20_m_over_a_10_m_scene(provider_loaded, request, tmp_path, transport):
    server = _server(request, transport)
    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=9303, width=384, height=320)
    with rasterio.open(src) as ds:
        t_in = ds.transform
    rng = np.random.default_rng(9303)
    scl = rng.choice(np.array([4, 5, 6, 7], np.uint8), size=(160, 192))  # vegetation, soil, water, unclassified
    scl[20:60, 30:90] = 9  # a cloud
    scl[60:70, 40:100] = 3  # its shadow
    scl[100:104, :] = 10  # cirrus
    scl[130:140, 150:160] = 8
    scl_path = tmp_path / "T33TWM_20240501T100031_SCL_20m.tif"
    with rasterio.open(scl_path, "w", driver="GTiff", width=192, height=160, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(t_in.c, t_in.f, 20, 20), nodata=0) as dst:
        dst.write(scl, 1)
    out = tmp_path / "flood.tif"
    result, log = _run(_params(src, out, server, transport, CLOUD_MASK=str(scl_path)))
    classes, t_out, *_ = _read(out)
    assert t_out == t_in  # no extent, no mask polygons: the whole grid
    cloud = np.isin(np.repeat(np.repeat(scl, 2, 0), 2, 1), [3, 8, 9, 10])
    np.testing.assert_array_equal(classes == 255, cloud)
    assert result["CLOUD_PIXELS"] == int(cloud.sum())
    assert result["CLOUD_FRACTION"] == pytest.approx(cloud.sum() / cloud.size)
    assert result["VALID_PIXELS"] == cloud.size - int(cloud.sum())
    assert "Cloud-masked:" in log
    assert iou(classes, np.where(cloud, 255, truth)) >= MIN_IOU


@pytest.mark.vllm
def test_a_clipped_qa_pixel_band_is_read_by_the_bits_given(provider_loaded, vllm_tensor_server, tmp_path):
    """A Landsat QA_PIXEL band clipped to the area (Clip raster by extent) has lost the file name that says what
    it is: its flags match no scene class, which the log says, and CLOUD_VALUES=bits:1,2,3,4 reads its cloud bits."""
    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=9316, width=256, height=256)
    with rasterio.open(src) as ds:
        t_in = ds.transform
    qa = np.full((128, 128), 21824, np.uint16)  # clear land, at 20 m
    qa[10:40, 20:70] |= 1 << 3 | 1 << 1  # cloud, dilated
    qa[40:48, 20:90] |= 1 << 4  # its shadow
    qa[90:94, :] = 22080 | 1 << 2  # cirrus
    qa[110:120, 0:30] = 21952  # water: not cloud
    clipped = tmp_path / "OUTPUT.tif"  # what QGIS names a temporary clip
    with rasterio.open(clipped, "w", driver="GTiff", width=128, height=128, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(t_in.c, t_in.f, 20, 20), nodata=1) as dst:
        dst.write(qa, 1)
    out = tmp_path / "flood.tif"
    result, log = _run(_params(src, out, vllm_tensor_server, "tensor", CLOUD_MASK=str(clipped)))
    assert result["CLOUD_PIXELS"] == 0 and "are no Sentinel-2 scene classes" in log and "bits:1,2,3,4" in log, log
    result, log = _run(_params(src, out, vllm_tensor_server, "tensor", CLOUD_MASK=str(clipped),
                               CLOUD_VALUES="bits:1,2,3,4"))
    cloud = np.repeat(np.repeat((qa & 0b11110) != 0, 2, 0), 2, 1)
    classes, *_ = _read(out)
    np.testing.assert_array_equal(classes == 255, cloud)
    assert result["CLOUD_PIXELS"] == int(cloud.sum()) and "cloud bits 1, 2, 3, 4 (CLOUD_VALUES)" in log, log
    assert "scene classes" not in log
    assert iou(classes, np.where(cloud, 255, truth)) >= MIN_IOU


@pytest.mark.vllm
def test_a_cloud_mask_beside_the_scene_is_a_warning(provider_loaded, vllm_server, tmp_path):
    src = tmp_path / "scene.tif"
    generate_scene(src, seed=9304, width=256, height=256)
    with rasterio.open(src) as ds:
        t_in = ds.transform
    far = tmp_path / "other-scene-SCL.tif"
    with rasterio.open(far, "w", driver="GTiff", width=50, height=50, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(t_in.c + 50_000, t_in.f, 20, 20)) as dst:
        dst.write(np.full((50, 50), 9, np.uint8), 1)
    result, log = _run(_params(src, tmp_path / "flood.tif", vllm_server, "image", CLOUD_MASK=str(far)))
    assert "WARNING The cloud mask" in log and "does not overlap the area" in log
    assert result["CLOUD_PIXELS"] == 0 and result["VALID_PIXELS"] == 256 * 256


@pytest.mark.vllm
def test_an_l1c_msk_classi_jp2_masks_opaque_clouds_and_cirrus(provider_loaded, vllm_tensor_server, tmp_path):
    """An L1C product's QI_DATA/MSK_CLASSI_B00.jp2 (three 0/1 bands at 60 m: opaque clouds, cirrus, snow and ice)
    as CLOUD_MASK over a 10 m scene, CLOUD_VALUES left at their default."""
    src = tmp_path / "scene.tif"
    truth = generate_scene(src, seed=9305, width=384, height=320)
    with rasterio.open(src) as ds:
        t_in = ds.transform
    flags = np.zeros((3, 54, 64), np.uint8)
    flags[0, 5:15, 10:30] = 1  # opaque clouds
    flags[1, 12:20, 20:50] = 1  # cirrus, partly over them
    flags[2, 30:40, :] = 1  # snow and ice: not cloud
    msk = tmp_path / "MSK_CLASSI_B00.jp2"
    with rasterio.open(msk, "w", driver="JP2OpenJPEG", width=64, height=54, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(t_in.c, t_in.f, 60, 60), QUALITY=100,
                       REVERSIBLE="YES") as dst:
        dst.write(flags)
    out = tmp_path / "flood.tif"
    result, log = _run(_params(src, out, vllm_tensor_server, "tensor", CLOUD_MASK=str(msk)))
    classes, *_ = _read(out)
    cloud = np.repeat(np.repeat(flags[0] | flags[1], 6, 0), 6, 1)[:320, :384].astype(bool)
    np.testing.assert_array_equal(classes == 255, cloud)
    assert result["CLOUD_PIXELS"] == int(cloud.sum()) == 36 * (10 * 20 + 8 * 30 - 3 * 10)
    assert "cloud flags in bands 1, 2 (Sentinel-2 MSK_CLASSI: opaque clouds, cirrus)" in log, log
    assert iou(classes, np.where(cloud, 255, truth)) >= MIN_IOU


# ---------------------------------------------------------------------------------------------- band files
S2_NAMES = {"B02": ("BLUE", 10), "B03": ("GREEN", 10), "B04": ("RED", 10), "B8A": ("NIR_NARROW", 20),
            "B11": ("SWIR_1", 20), "B12": ("SWIR_2", 20)}


def _band_files(folder: Path, seed: int, width: int, height: int):
    """Six single-band files as downloaded (10 m B02-B04, 20 m B8A/B11/B12), and the truth at 10 m (255 in the
    fill). Like a partial Sentinel-2 tile, the top left corner lies beyond the swath's edge: 0 in every band,
    and the files declare no nodata value; like every product acquired since 2022, the values carry the −1000
    offset, which the files' names let the plugin apply by itself."""
    refl, truth = synthesize(seed, width, height)  # BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2
    dn = (np.rint(refl * 10000) + 1000).clip(1, 65535).astype(np.uint16)  # acquired in 2024: the −1000 offset
    rows, cols = np.indices((height, width)) // 2
    fill = rows + cols < width // 6  # on whole 20 m cells, so that the 20 m bands have the same edge
    dn[:, fill] = 0
    truth[fill] = 255
    x0, y0 = 500000.0, 4990000.0
    files = []
    for i, (band, (_, px)) in enumerate(S2_NAMES.items()):
        data = dn[i] if px == 10 else dn[i].reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)).astype(np.uint16)
        path = folder / f"T33TWM_20240501T100031_{band}_{px}m.tif"
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                           dtype="uint16", crs="EPSG:32633", transform=from_origin(x0, y0, px, px)) as dst:
            dst.write(data, 1)
        files.append(str(path))
    return sorted(files), truth  # as a file dialog lists them: B8A after B12


@pytest.mark.vllm
@pytest.mark.parametrize("transport", ["image", "tensor"])
def test_vrt_of_band_files_at_10_and_20_m(provider_loaded, request, tmp_path, transport):
    import processing

    server = _server(request, transport)
    files, truth = _band_files(tmp_path, seed=9305, width=384, height=320)
    vrt = processing.run("gdal:buildvirtualraster", {"INPUT": files, "RESOLUTION": 1, "SEPARATE": True,
                                                     "OUTPUT": str(tmp_path / "stack.vrt")})["OUTPUT"]
    with rasterio.open(vrt) as ds:
        assert (ds.count, ds.width, ds.height, ds.res) == (6, 384, 320, (10.0, 10.0))
    out = tmp_path / "flood.tif"
    result, log = _run(_params(vrt, out, server, transport))
    assert "the model gets input bands [1, 2, 3, 6, 4, 5]" in log, log  # B8A found by its file's name
    assert "Sentinel-2 acquired on 2024-05-01 (in the band files' names): reflectance offset -0.1" in log, log
    classes, t_out, *_ = _read(out)
    assert t_out == from_origin(500000.0, 4990000.0, 10, 10) and classes.shape == (320, 384)
    assert iou(classes, truth) >= MIN_IOU  # B8A, B11 and B12 at 20 m blur the water edges a little
    assert ((classes == 255) == (truth == 255)).all()  # the fill beyond the swath is no data, the rest mapped
    assert "0 in every band used are taken as no data" in log, log
    assert result["WATER_PIXELS"] == int((classes == 1).sum())
    assert result["VALID_PIXELS"] == int((truth != 255).sum())
    if transport == "image":
        assert "temporary GeoTIFF" in log and "virtual raster" in log
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _landsat_band_file(path: Path, data: np.ndarray, nodata: int = 0) -> str:
    """One band of a Landsat scene as USGS delivers it: a 30 m UTM GeoTIFF."""
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="uint16", nodata=nodata, crs="EPSG:32618",
                       transform=from_origin(500000.0, 4500000.0, 30, 30)) as dst:
        dst.write(data, 1)
    return str(path)


@pytest.mark.vllm
def test_vrt_of_landsat_collection2_band_files(provider_loaded, vllm_tensor_server, tmp_path):
    """Landsat 9 Collection 2 Level-2 band files as USGS names them: B5 is the near infrared (a red edge in
    Sentinel-2's numbering), the values are (reflectance + 0.2) / 0.0000275, and the QA_PIXEL band's values are
    bit flags; with nothing set but the cloud mask, all three are read as Landsat means them."""
    import processing

    refl, truth = synthesize(9307, 256, 224)  # BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2
    dn = np.rint((np.concatenate([refl[:1], refl]) + 0.2) / 2.75e-5).astype(np.uint16)  # SR_B1 (coastal) too
    scene = "LC09_L2SP_013032_20231008_20231009_02_T1"
    files = []
    for band, data in zip(("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7"), dn):
        files.append(_landsat_band_file(tmp_path / f"{scene}_{band}.TIF", data))
    vrt = processing.run("gdal:buildvirtualraster", {"INPUT": files, "RESOLUTION": 1, "SEPARATE": True,
                                                     "OUTPUT": str(tmp_path / "stack.vrt")})["OUTPUT"]
    qa = np.full((224, 256), 21824, np.uint16)  # clear land: flags, none of them cloud
    qa[:32, :64] |= 1 << 3  # cloud
    qa[32:48, :64] |= 1 << 4  # cloud shadow
    qa_path = _landsat_band_file(tmp_path / f"{scene}_QA_PIXEL.TIF", qa, nodata=1)
    out = tmp_path / "flood.tif"
    result, log = _run(_params(vrt, out, vllm_tensor_server, "tensor", CLOUD_MASK=str(qa_path)))
    assert "the model gets input bands [2, 3, 4, 5, 6, 7]" in log, log
    assert "Landsat Collection 2 Level-2 surface reflectance" in log and "0.0000275" in log, log
    assert "cloud bits 1, 2, 3, 4 (Landsat QA_PIXEL" in log, log
    classes, *_ = _read(out)
    assert (classes[:48, :64] == 255).all() and (classes[48:] != 255).all() and (classes[:, 64:] != 255).all()
    clear = classes != 255
    assert iou(np.where(clear, classes, 0), np.where(clear, truth, 0)) >= MIN_IOU
    assert result["CLOUD_PIXELS"] == 48 * 64 and result["VALID_PIXELS"] == 256 * 224 - 48 * 64
    assert result["WATER_PIXELS"] == int((classes == 1).sum())


@pytest.mark.vllm
def test_vrt_of_landsat_level1_band_files_and_their_mtl_file(provider_loaded, vllm_tensor_server, tmp_path):
    """Landsat 8 Level-1 band files in their download folder, stacked by a VRT elsewhere: the values become
    top-of-atmosphere reflectance by the MTL file beside them; without it the run stops before any request."""
    import processing
    from osgeo import gdal
    from qgis.core import QgsProcessingException, QgsRasterLayer

    refl, truth = synthesize(9309, 256, 224)
    scene, sun = "LC08_L1TP_013032_20230612_20230620_02_T1", 58.25
    dn = np.rint((refl * math.sin(math.radians(sun)) + 0.1) / 2e-5).astype(np.uint16)
    folder = tmp_path / scene
    folder.mkdir()
    files = []
    for band, data in zip((2, 3, 4, 5, 6, 7), dn):
        files.append(_landsat_band_file(folder / f"{scene}_B{band}.TIF", data))
    vrt = processing.run("gdal:buildvirtualraster", {"INPUT": files, "RESOLUTION": 1, "SEPARATE": True,
                                                     "OUTPUT": str(tmp_path / "stack.vrt")})["OUTPUT"]
    out = tmp_path / "flood.tif"
    with pytest.raises(QgsProcessingException, match=f"{scene}_MTL.txt"):
        _run(_params(vrt, out, vllm_tensor_server, "tensor"))
    assert not out.exists()
    write_mtl(folder, scene, sun=sun)
    result, log = _run(_params(vrt, out, vllm_tensor_server, "tensor"))
    assert "the model gets input bands [1, 2, 3, 4, 5, 6]" in log, log
    assert f"Landsat Level-1 {scene}: top-of-atmosphere reflectance" in log and "sin(58.25°)" in log, log
    classes, *_ = _read(out)
    assert iou(classes, truth) >= MIN_IOU
    assert result["WATER_PIXELS"] == int((classes == 1).sum())

    # the same scene as USGS delivers it, one .tar, its bands added to QGIS from it and stacked by a VRT
    archive = tmp_path / f"{scene}.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    members = [f"/vsitar/{archive}/{os.path.basename(f)}" for f in files]  # the layers' sources in QGIS
    assert all(QgsRasterLayer(member, "band", "gdal").isValid() for member in members)
    from_tar = str(tmp_path / "from_tar.vrt")
    gdal.BuildVRT(from_tar, members, separate=True).FlushCache()  # what Build virtual raster writes for them
    shutil.rmtree(folder)  # the band files and the MTL file are in the archive only
    out_tar = tmp_path / "flood_tar.tif"
    _, log = _run(_params(from_tar, out_tar, vllm_tensor_server, "tensor"))
    assert f"from '/vsitar/{archive}/{scene}_MTL.txt'" in log, log
    np.testing.assert_array_equal(_read(out_tar)[0], classes)


@pytest.mark.vllm
def test_the_bands_own_scale_and_offset_reach_an_image_server(provider_loaded, vllm_server, tmp_path):
    """Bands whose GDAL metadata says value × 0.0000275 − 0.2 (what QGIS applies when it shows them): with SCALE
    and OFFSET empty, the IOProcessor, which only divides by 10000, gets a copy of the scaled values."""
    refl, truth = synthesize(9311, 256, 224)
    path = tmp_path / "scaled.tif"
    with rasterio.open(path, "w", driver="GTiff", width=256, height=224, count=6, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000.0, 4500000.0, 10, 10)) as dst:
        dst.write(np.rint((refl + 0.2) / 2.75e-5).astype(np.uint16))
        dst.scales, dst.offsets = (2.75e-5,) * 6, (-0.2,) * 6
    out = tmp_path / "flood.tif"
    result, log = _run(_params(path, out, vllm_server, "image"))
    assert "carry scale 2.75e-05 and offset -0.2" in log and "value × 2.75e-05 − 0.2" in log, log
    classes, *_ = _read(out)
    assert iou(classes, truth) >= MIN_IOU
    assert result["WATER_PIXELS"] == int((classes == 1).sum())


# ------------------------------------------------------------------- the layer's additional no data values
def _layer_with_fill_edge(tmp_path, name="edge.tif"):
    """A project layer of a scene whose columns 320+ are 65535 in every band, a fill the file does not declare
    (no nodata value), set as the layer's additional no data value, as Layer Properties ▸ Transparency does."""
    from qgis.core import QgsProject, QgsRasterLayer, QgsRasterRange

    refl, truth = synthesize(9313, 384, 320)
    data = np.rint(refl * 10000).astype(np.uint16)
    data[:, :, 320:] = 65535
    path = tmp_path / name
    with rasterio.open(path, "w", driver="GTiff", width=384, height=320, count=6, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000.0, 4500000.0, 10, 10)) as dst:
        dst.write(data)
    layer = QgsRasterLayer(str(path), "edge", "gdal")
    for band in range(1, 7):
        layer.dataProvider().setUserNoDataValue(band, [QgsRasterRange(65535, 65535)])
    QgsProject.instance().addMapLayer(layer)
    truth[:, 320:] = 255
    return layer, truth


@pytest.mark.vllm
@pytest.mark.parametrize("transport", ["image", "tensor"])
def test_the_layers_additional_no_data_value_is_nodata_in_the_map(provider_loaded, request, tmp_path, transport):
    from qgis.core import QgsProject

    server = _server(request, transport)
    layer, truth = _layer_with_fill_edge(tmp_path)
    try:
        out = tmp_path / "flood.tif"
        result, log = _run(_params(layer.id(), out, server, transport))
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    classes, *_ = _read(out)
    np.testing.assert_array_equal(classes == 255, truth == 255)
    assert result["VALID_PIXELS"] == 320 * 320
    assert f"leave out {64 * 320} of the area's pixels with data" in log, log
    assert iou(classes, truth) >= MIN_IOU


def test_the_layers_no_data_ranges_are_read_with_their_bounds(provider_loaded, tmp_path):
    from qgis.core import QgsRasterLayer, QgsRasterRange

    from plugin.processing.layer_inputs import layer_nodata

    path = tmp_path / "declared.tif"
    generate_scene(path, seed=9314, width=64, height=64, nodata=0)
    layer = QgsRasterLayer(str(path), "declared", "gdal")
    assert layer_nodata(layer) == ((), [])
    layer.dataProvider().setUserNoDataValue(3, [QgsRasterRange(9000, 9000), QgsRasterRange(
        math.nan, 100, QgsRasterRange.BoundsType.IncludeMin)])
    (single, below), warnings = layer_nodata(layer)
    assert single == NodataRange(3, 9000, 9000) and warnings == []
    assert (below.band, below.high, below.include_high) == (3, 100, False) and math.isnan(below.low)
    values = np.array([99, 100, 8999, 9000], np.uint16)
    np.testing.assert_array_equal(single.covers(values) | below.covers(values), [True, False, False, True])


def test_a_layer_set_to_ignore_its_files_nodata_value_gets_a_warning(provider_loaded, tmp_path):
    from qgis.core import QgsRasterLayer

    from plugin.processing.layer_inputs import layer_nodata

    path = tmp_path / "declared.tif"
    generate_scene(path, seed=9314, width=64, height=64, nodata=0)
    layer = QgsRasterLayer(str(path), "declared", "gdal")
    layer.dataProvider().setUseSourceNoDataValue(2, False)
    ranges, warnings = layer_nodata(layer)
    assert ranges == () and len(warnings) == 1
    assert "not to use the nodata value of band(s) [2]" in warnings[0] and "-a_nodata none" in warnings[0]


# --------------------------------------------------------------------------------------------- bad input
UNREACHABLE = "http://127.0.0.1:9"  # nothing is asked of a server before the area is checked


def _bad(tmp_path, message, **extra):
    import processing
    from qgis.core import QgsProcessingException

    src = tmp_path / "scene.tif"
    if not src.exists():
        generate_scene(src, seed=9306, width=96, height=96)
    out = tmp_path / "out" / "flood.tif"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(QgsProcessingException) as err:
        processing.run("floodmapper:map_floods", {"INPUT": str(src), "BACKEND": 0, "SERVER_URL": UNREACHABLE,
                                                  "OUTPUT": str(out), **extra})
    assert message in str(err.value), str(err.value)
    assert list(out.parent.iterdir()) == []
    return str(err.value)


def test_bad_extents(provider_loaded, tmp_path):
    _bad(tmp_path, "is not an extent", EXTENT="north of the river")
    _bad(tmp_path, "is empty", EXTENT="500000,500000,4990000,4995000 [EPSG:32633]")
    _bad(tmp_path, "minimum above its maximum", EXTENT="501000,500000,4990000,4995000 [EPSG:32633]")
    text = _bad(tmp_path, "does not overlap the raster", EXTENT="10,11,50,51 [EPSG:4326]")
    assert "Choose an extent over the raster" in text


def test_bad_masks(provider_loaded, tmp_path):
    from qgis.core import QgsProject

    empty = _polygon_layer("", "EPSG:32633")
    far = _polygon_layer("POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))", "EPSG:4326")
    QgsProject.instance().addMapLayers([empty, far])
    try:
        _bad(tmp_path, "The mask layer has no polygons", MASK=empty.id())
        _bad(tmp_path, "do not overlap the raster", MASK=far.id())
    finally:
        QgsProject.instance().removeMapLayers([empty.id(), far.id()])


def test_cloud_values_must_be_numbers(provider_loaded, tmp_path):
    scl = tmp_path / "scl.tif"
    with rasterio.open(scl, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(0, 0, 20, 20)) as dst:
        dst.write(np.zeros((8, 8), np.uint8), 1)
    text = _bad(tmp_path, "CLOUD_VALUES '3,8,cirrus' is not a list of numbers", CLOUD_MASK=str(scl),
                CLOUD_VALUES="3,8,cirrus")
    assert "1 for a 0/1 cloud mask" in text
    text = _bad(tmp_path, "CLOUD_VALUES 'bits:1,2,40' gives no bit numbers from 0 to 31", CLOUD_MASK=str(scl),
                CLOUD_VALUES="bits:1,2,40")
    assert "bits:10,11 for Sentinel-2 QA60" in text
