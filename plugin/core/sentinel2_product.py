"""A Sentinel-2 L2A or L1C product as downloaded, stacked into one raster to map.

A product is given as its `.SAFE` folder, the `.zip` it comes in, its `MTD_MSIL2A.xml` / `MTD_MSIL1C.xml`, or a
subdataset GDAL's SENTINEL2 driver makes of it (`SENTINEL2_L2A:…/MTD_MSIL2A.xml:10m:EPSG_32633`, what QGIS adds
when the .zip is dropped on the map). No subdataset holds the model's bands: the 10 m one has B2, B3, B4 and
B8, the 20 m one B5-B7, B8A, B11 and B12. So the product's band files (the metadata file's IMAGE_FILE list)
are stacked in a virtual raster: every spectral band at its finest resolution, in the product's order (B01 …
B12), on the 10 m grid (the coarser bands read at 10 m, nearest), with the product's nodata value (0) and
each band's BOA_ADD_OFFSET / RADIO_ADD_OFFSET as the metadata gives them. Nothing is copied: the VRT names
the band files where they are, inside the .zip too.
"""

from __future__ import annotations

import os
import posixpath
import re
import zipfile
from dataclasses import dataclass, field
from typing import Optional
from xml.etree import ElementTree

from .archive_members import folder_of, is_file, join, read_text
from .errors import InputError
from .gdal_bindings import gdal_for

# the product's spectral bands in its own order (band_id 0-12 in its metadata)
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
METADATA = re.compile(r"^MTD_MSIL(2A|1C)\.xml$", re.IGNORECASE)
_SUBDATASET = re.compile(r"^SENTINEL2_L(?:2A|1C):(?P<rest>.+)$", re.IGNORECASE)
_GRANULE_BAND_FILE = re.compile(r"^T\d{2}[A-Z]{3}_\d{8}T\d{6}_B(?:\d{2}|8A)(?:_\d{2}m)?\.jp2$", re.IGNORECASE)
_BAND_FILE = re.compile(r"_(?P<band>B\d{2}|B8A|SCL)(?:_(?P<res>\d{2})m)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Product:
    """What the stack is made of."""

    name: str  # S2B_MSIL2A_20240501T100031_N0510_R122_T33TWM_20240501T123456
    metadata: str  # the MTD_MSIL*.xml file, as GDAL names it (/vsizip/… inside a .zip)
    level: str  # "L2A" or "L1C"
    bands: tuple[tuple[str, int, str], ...]  # (band, resolution in m, band file) in BANDS order
    nodata: int = 0
    add_offsets: dict[str, float] = field(default_factory=dict)  # band -> BOA_/RADIO_ADD_OFFSET, stored units
    cloud_file: str = ""  # the scene classification (SCL, L2A) or MSK_CLASSI_B00 (L1C); "" when it has none

    @property
    def offset_key(self) -> str:
        return "BOA_ADD_OFFSET" if self.level == "L2A" else "RADIO_ADD_OFFSET"

    def describe(self) -> str:
        """'B02, B03, B04, B08 at 10 m; B05, … at 20 m; …'"""
        by_res: dict[int, list[str]] = {}
        for band, res, _ in self.bands:
            by_res.setdefault(res, []).append(band)
        return "; ".join(f"{', '.join(names)} at {res} m" for res, names in sorted(by_res.items()))


def metadata_of(source: str) -> Optional[str]:
    """The product's metadata file when `source` names a Sentinel-2 product (folder, .zip, metadata file or
    subdataset), else None: any other raster is no product, and is mapped as it is."""
    source = (source or "").strip()
    match = _SUBDATASET.match(source)
    if match:
        parts = match.group("rest").rsplit(":", 2)
        if len(parts) == 3 and METADATA.match(posixpath.basename(parts[0].replace("\\", "/"))):
            return parts[0]
        return None
    name = posixpath.basename(source.replace("\\", "/").rstrip("/"))
    if METADATA.match(name):
        return source if is_file(source) else None
    if os.path.isdir(source):
        for entry in sorted(os.listdir(source)):
            if METADATA.match(entry):
                return os.path.join(source, entry)
        return None
    if name.lower().endswith(".zip") and os.path.isfile(source):
        try:
            with zipfile.ZipFile(source) as archive:
                members = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return None
        for member in members:
            parts = member.rstrip("/").split("/")
            if len(parts) == 2 and METADATA.match(parts[1]):
                return f"/vsizip/{os.path.abspath(source)}/{member}"
    return None


def metadata_of_band_file(source: str) -> Optional[str]:
    """The product's metadata file when `source` is one of its spectral band files (`GRANULE/…/IMG_DATA/R10m/
    T33TWM_20240501T100031_B02_10m.jp2`, as the Browser shows them, inside the .zip too), else None."""
    path = (source or "").strip().replace("\\", "/")
    if not _GRANULE_BAND_FILE.match(posixpath.basename(path)) or "/GRANULE/" not in path:
        return None
    safe = path.rsplit("/GRANULE/", 1)[0]
    for level in ("2A", "1C"):
        metadata = join(safe, f"MTD_MSIL{level}.xml")
        if is_file(metadata):
            return metadata
    return None


def band_of_file(path: str) -> str:
    """The band a product's band file holds ('B02' for `…/T33TWM_20240501T100031_B02_10m.jp2`), else ""."""
    stem = posixpath.splitext(posixpath.basename(path.replace("\\", "/")))[0]
    match = _BAND_FILE.search(stem)
    return match.group("band").upper() if match else ""


def product_name(metadata: str) -> str:
    """The product's name: its .SAFE folder's, without `.SAFE` (the folder that holds `metadata`)."""
    name = posixpath.basename(folder_of(metadata).replace("\\", "/").rstrip("/"))
    return name[:-5] if name.upper().endswith(".SAFE") else name


def read_product(metadata: str) -> Product:
    """The product whose metadata file is `metadata`; InputError when it cannot be read or lacks a band."""
    try:
        # ElementTree resolves no external entities, and expat 2.4+ bounds entity expansion
        root = ElementTree.fromstring(read_text(metadata))  # noqa: S314 - a product's own metadata file
    except (OSError, UnicodeDecodeError, ElementTree.ParseError) as exc:
        raise InputError(f"Cannot read the Sentinel-2 product's metadata file {metadata}: {exc}.",
                         "Check that the download is complete (unzip -t on the .zip).") from None
    level = "L2A" if "2A" in posixpath.basename(metadata.replace("\\", "/")).upper() else "L1C"
    folder = folder_of(metadata)
    found: dict[str, tuple[int, str]] = {}
    scl: tuple[int, str] = (0, "")
    for element in root.iter():
        if not element.tag.endswith("IMAGE_FILE") or not element.text:
            continue
        relative = element.text.strip()
        match = _BAND_FILE.search(relative)
        if match is None:
            continue
        band, res = match.group("band").upper(), int(match.group("res") or _native_resolution(match.group("band")))
        path = join(folder, relative + ".jp2")
        if band == "SCL":
            if not scl[1] or res < scl[0]:
                scl = (res, path)
        elif band not in found or res < found[band][0]:
            found[band] = (res, path)
    bands = tuple((band, *found[band]) for band in BANDS if band in found)
    name = product_name(metadata)
    missing = [band for band, _, path in bands if not is_file(path)]
    if not bands or missing:
        raise InputError(
            f"The Sentinel-2 product {name} is incomplete: "
            + (f"its band files for {', '.join(missing)} are missing." if missing
               else "its metadata file lists no band files."),
            "Download the product again (or unzip it completely) and keep its folders as they are.")
    return Product(name=name, metadata=metadata, level=level, bands=bands, nodata=_nodata(root),
                   add_offsets=_add_offsets(root), cloud_file=scl[1] or _classification_mask(bands))


def write_stack(product: Product, folder: str) -> str:
    """The virtual raster of the product's bands, written in `folder` under the product's name; its path."""
    gdal = gdal_for(f"the bands of the Sentinel-2 product {product.name}")
    path = os.path.join(folder, f"{product.name}.vrt")
    files = [file for _, _, file in product.bands]
    options = gdal.BuildVRTOptions(separate=True, resolution="highest", srcNodata=product.nodata,
                                   VRTNodata=product.nodata)
    vrt = gdal.BuildVRT(path, files, options=options)
    if vrt is None:
        raise InputError(f"The band files of the Sentinel-2 product {product.name} could not be stacked: "
                         f"{gdal.GetLastErrorMsg() or 'GDAL gave no reason'}.",
                         "Check that GDAL reads JPEG 2000 (gdalinfo --formats lists JP2OpenJPEG).")
    try:
        for index, (band, _, _) in enumerate(product.bands, start=1):
            if band in product.add_offsets:
                vrt.GetRasterBand(index).SetMetadataItem(product.offset_key, f"{product.add_offsets[band]:g}")
    finally:
        vrt = None  # closing writes the file
    return path


def _native_resolution(band: str) -> int:
    """An L1C band file's resolution (its name has none)."""
    return {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B01": 60, "B09": 60, "B10": 60}.get(band.upper(), 20)


def _nodata(root: ElementTree.Element) -> int:
    """The product's NODATA special value (0 in every product so far)."""
    for element in root.iter():
        if element.tag.endswith("Special_Values"):
            text = {child.tag: (child.text or "").strip() for child in element}
            if text.get("SPECIAL_VALUE_TEXT") == "NODATA":
                try:
                    return int(text.get("SPECIAL_VALUE_INDEX", "0"))
                except ValueError:
                    return 0
    return 0


def _add_offsets(root: ElementTree.Element) -> dict[str, float]:
    """band -> BOA_ADD_OFFSET (L2A) or RADIO_ADD_OFFSET (L1C); empty before processing baseline 04.00."""
    offsets: dict[str, float] = {}
    for element in root.iter():
        if element.tag.endswith(("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")) and element.get("band_id") is not None:
            try:
                offsets[BANDS[int(element.get("band_id", ""))]] = float((element.text or "").strip())
            except (ValueError, IndexError):
                continue
    return offsets


def _classification_mask(bands: tuple[tuple[str, int, str], ...]) -> str:
    """An L1C granule's cloud classification mask (QI_DATA/MSK_CLASSI_B00.jp2, from baseline 04.00), or ""."""
    band_file = bands[0][2].replace("\\", "/")
    if "/IMG_DATA/" not in band_file:
        return ""
    granule = band_file.split("/IMG_DATA/")[0]
    path = f"{granule}/QI_DATA/MSK_CLASSI_B00.jp2"
    return path if is_file(path) else ""
