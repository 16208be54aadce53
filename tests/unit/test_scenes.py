from __future__ import annotations

import numpy as np
import pytest
import rasterio

from scripts import scenes


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path):
    a = tmp_path / "a.tif"
    b = tmp_path / "b.tif"
    c = tmp_path / "c.tif"
    ta = scenes.generate_scene(a, seed=7, width=200, height=150)
    tb = scenes.generate_scene(b, seed=7, width=200, height=150)
    tc = scenes.generate_scene(c, seed=8, width=200, height=150)
    with rasterio.open(a) as ra, rasterio.open(b) as rb, rasterio.open(c) as rc:
        assert np.array_equal(ra.read(), rb.read())
        assert not np.array_equal(ra.read(), rc.read())
    assert np.array_equal(ta, tb)
    assert not np.array_equal(ta, tc)


def test_s1f11_geotiff_layout(tmp_path):
    p = tmp_path / "s.tif"
    truth = scenes.generate_scene(p, seed=1, width=300, height=420)
    with rasterio.open(p) as src:
        assert (src.count, src.width, src.height) == (6, 300, 420)
        assert src.dtypes == ("uint16",) * 6
        assert src.descriptions == ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
        assert src.crs.to_epsg() == 32633
        assert src.transform.a == pytest.approx(10.0) and src.transform.e == pytest.approx(-10.0)
        data = src.read()
    assert truth.shape == (420, 300) and truth.dtype == np.uint8
    assert set(np.unique(truth)) <= {0, 1}
    assert data.mean() > 1  # reflectance x 10000, as the IOProcessor expects for integer rasters
    assert data.max() <= 15000 and data.min() >= 1


def test_s2l1c_has_13_bands_and_sen1floods11_bands_match(tmp_path):
    p13 = tmp_path / "l1c.tif"
    p6 = tmp_path / "s6.tif"
    t13 = scenes.generate_scene(p13, seed=3, width=128, height=96, bands="s2l1c")
    t6 = scenes.generate_scene(p6, seed=3, width=128, height=96, bands="s1f11")
    with rasterio.open(p13) as a, rasterio.open(p6) as b:
        assert a.count == 13
        assert a.descriptions == scenes.S2_BANDS
        assert "B8A" in a.descriptions and a.descriptions.index("B8A") == 8
        assert np.array_equal(a.read()[list(scenes.S1F11_INDICES_IN_S2)], b.read())
    assert np.array_equal(t13, t6)


def test_epsg4326_georeference(tmp_path):
    p = tmp_path / "g.tif"
    scenes.generate_scene(p, seed=2, width=100, height=80, crs="EPSG:4326")
    with rasterio.open(p) as src:
        assert src.crs.to_epsg() == 4326
        lon, lat = src.lnglat()
        assert lon == pytest.approx(15.0, abs=0.01) and lat == pytest.approx(45.0, abs=0.01)
        assert 0 < src.transform.a < 0.001


def test_utm_scene_centred_on_requested_lonlat(tmp_path):
    p = tmp_path / "u.tif"
    scenes.generate_scene(p, seed=2, width=100, height=80, centre_lonlat=(14.0, 46.0))
    with rasterio.open(p) as src:
        lon, lat = src.lnglat()
    assert lon == pytest.approx(14.0, abs=0.001) and lat == pytest.approx(46.0, abs=0.001)


def test_water_is_dark_in_nir_and_swir_land_is_not():
    refl, truth = scenes.synthesize(11, 256, 256)
    nir, swir = refl[3], refl[4]
    water = truth == 1
    assert water.mean() > 0.04  # every scene has some water
    assert np.median(nir[water]) < 0.08
    assert np.median(nir[~water]) > 0.15
    assert np.median(swir[water]) < 0.05


def test_edges_are_mixed_pixels():
    refl, truth = scenes.synthesize(5, 256, 256)
    nir = refl[3]
    # pixels in between clear water (< 0.07) and land (> 0.2) only exist at mixed edges
    between = (nir > 0.09) & (nir < 0.16)
    assert between.sum() > 50
    # and they sit next to a truth boundary
    edge = np.zeros_like(truth, bool)
    edge[1:, :] |= truth[1:, :] != truth[:-1, :]
    edge[:-1, :] |= truth[1:, :] != truth[:-1, :]
    edge[:, 1:] |= truth[:, 1:] != truth[:, :-1]
    edge[:, :-1] |= truth[:, 1:] != truth[:, :-1]
    near = edge.copy()
    near[1:, :] |= edge[:-1, :]
    near[:-1, :] |= edge[1:, :]
    near[:, 1:] |= edge[:, :-1]
    near[:, :-1] |= edge[:, 1:]
    assert near[between].mean() > 0.5


def test_rivers_have_widths_between_3_and_30_px():
    widths = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        h = w = 400
        sd = np.full((h, w), np.inf, np.float32)
        line = scenes._river(rng, h, w, sd)
        inside = (line[:, 0] >= 0) & (line[:, 0] < h) & (line[:, 1] >= 0) & (line[:, 1] < w)
        seg = np.sqrt((np.diff(line, axis=0) ** 2).sum(1))
        length = seg[inside[1:] & inside[:-1]].sum()
        if length > 100:
            widths.append(scenes._cover(sd).sum() / length)  # area / length = mean width
    assert len(widths) > 20
    assert min(widths) >= 2.5 and max(widths) <= 31
    assert min(widths) < 8 and max(widths) > 18  # thin and wide ones both occur


def test_clouds_are_not_water_and_bright():
    for seed in range(40):
        refl, truth = scenes.synthesize(seed, 200, 200)
        bright = refl[0] > 0.3  # blue > 0.3 only under clouds
        if bright.sum() > 200:
            assert truth[bright].mean() < 0.02
            return
    pytest.fail("no cloudy scene in 40 seeds")


def test_nodata_border_marked_in_data_and_truth(tmp_path):
    p = tmp_path / "nd.tif"
    truth = scenes.generate_scene(p, seed=4, width=120, height=100, nodata=0, nodata_border=5)
    with rasterio.open(p) as src:
        assert src.nodata == 0
        data = src.read()
        mask = src.dataset_mask()
    assert (data[:, :5, :] == 0).all() and (data[:, :, -5:] == 0).all()
    assert (data[:, 5:-5, 5:-5] > 0).all()  # valid pixels never read as nodata
    assert (truth[:5] == 255).all() and (truth[:, :5] == 255).all()
    assert set(np.unique(truth[5:-5, 5:-5])) <= {0, 1}
    assert (mask[:5] == 0).all() and (mask[5:-5, 5:-5] == 255).all()


def test_nodata_border_needs_nodata(tmp_path):
    with pytest.raises(ValueError, match="nodata"):
        scenes.generate_scene(tmp_path / "x.tif", seed=1, width=50, height=50, nodata_border=3)


def test_float32_and_offset(tmp_path):
    pf = tmp_path / "f.tif"
    po = tmp_path / "o.tif"
    pu = tmp_path / "u.tif"
    scenes.generate_scene(pf, seed=9, width=64, height=64, dtype="float32")
    scenes.generate_scene(po, seed=9, width=64, height=64, offset=1000)
    scenes.generate_scene(pu, seed=9, width=64, height=64)
    with rasterio.open(pf) as f, rasterio.open(po) as o, rasterio.open(pu) as u:
        fd, od, ud = f.read(), o.read().astype(int), u.read().astype(int)
    assert fd.dtype == np.float32 and fd.max() < 1.6
    assert np.allclose(fd * 10000, ud, atol=1.0)
    assert np.array_equal(od - 1000, ud)


def test_write_truth_and_iou(tmp_path):
    p = tmp_path / "s.tif"
    t = tmp_path / "t.tif"
    truth = scenes.generate_scene(p, seed=12, width=90, height=70, crs="EPSG:4326")
    scenes.write_truth(t, truth, like=p)
    with rasterio.open(t) as a, rasterio.open(p) as b:
        assert a.crs == b.crs and a.transform == b.transform
        assert np.array_equal(a.read(1), truth)
    assert scenes.iou(truth, truth) == 1.0
    assert scenes.iou(np.zeros_like(truth), truth) == 0.0
    half = truth.copy()
    half[: half.shape[0] // 2] = 0
    assert 0.0 < scenes.iou(half, truth) < 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="band set"):
        scenes.synthesize(1, 64, 64, bands="rgb")
    with pytest.raises(ValueError, match="too small"):
        scenes.synthesize(1, 4, 64)
