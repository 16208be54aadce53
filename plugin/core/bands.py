"""Which input bands the model gets, in its order: from the user's list, band descriptions, or a known layout."""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from typing import Optional

import numpy as np

from .errors import InputError, MissingBands
from .landsat import landsat_band_names
from .raster import RasterInfo

DEFAULT_MODEL_BANDS = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")

# Names a band description may carry for each model band (normalised: upper case, alphanumerics only,
# Sentinel-2 band numbers without leading zeros). Keys are TerraTorch's HLS/Sen1Floods11 band names.
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "COASTAL_AEROSOL": ("B1", "COASTAL", "COASTALAEROSOL", "AEROSOL"),
    "BLUE": ("B2", "BLUE", "BLU"),
    "GREEN": ("B3", "GREEN", "GRN"),
    "RED": ("B4", "RED"),
    "RED_EDGE_1": ("B5", "REDEDGE1", "RE1"),
    "RED_EDGE_2": ("B6", "REDEDGE2", "RE2"),
    "RED_EDGE_3": ("B7", "REDEDGE3", "RE3"),
    "NIR_BROAD": ("B8", "NIR", "NIRBROAD", "BROADNIR", "NIR1"),
    "NIR_NARROW": ("B8A", "NIRNARROW", "NARROWNIR", "NIRN", "NIR08", "NIR2", "REDEDGE4", "RE4"),
    "WATER_VAPOR": ("B9", "WATERVAPOUR", "WATERVAPOR", "WV"),
    "CIRRUS": ("B10", "CIRRUS"),
    "SWIR_1": ("B11", "SWIR1", "SWIR16"),
    "SWIR_2": ("B12", "SWIR2", "SWIR22"),
}
# Band order of a 13-band Sentinel-2 L1C product (B01..B12 with B8A after B08), used only when the file
# names no band at all and has exactly 13 of them.
S2_L1C_ORDER = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")

def _norm(text: str) -> str:
    token = re.sub(r"[^A-Z0-9]", "", text.upper())
    match = re.fullmatch(r"B0*(\d+A?)", token)
    return "B" + match.group(1) if match else token


def band_token(text: Optional[str]) -> str:
    """A description's first word as a band token: 'B4, central wavelength 665 nm' and 'B04' -> 'B4'; 'B8A' -> 'B8A'."""
    words = [t for t in re.split(r"[^A-Za-z0-9]+", text or "") if t]
    return _norm(words[0]) if words else ""


def _aliases(name: str) -> set[str]:
    key = name.upper()
    return {_norm(a) for a in BAND_ALIASES.get(key, ())} | {_norm(name)}


def _band_canonical(description: Optional[str], names: tuple[str, ...]) -> Optional[str]:
    """The model band name a description stands for, preferring the most specific reading.

    "NIR_NARROW" must read as NIR_NARROW, not as the broad NIR its first token spells; "B02 (blue)" as BLUE.
    """
    if not description:
        return None
    tokens = [t for t in re.split(r"[^A-Za-z0-9]+", description) if t]
    candidates = [_norm(description)]
    candidates += [_norm(a + b) for a, b in zip(tokens, tokens[1:])]
    candidates += [_norm(t) for t in tokens]
    for candidate in candidates:
        for name in names:
            if candidate in _aliases(name):
                return name
    return None


def check_band_types(info: RasterInfo, bands: list[int]) -> None:
    """Complex bands (radar SLC) cannot be reflectance: say so before any request."""
    bad = [b for b in bands if np.dtype(info.dtypes[b]).kind == "c"]
    if bad:
        raise InputError(
            f"Band(s) {', '.join(str(b + 1) for b in bad)} of '{info.path}' hold complex numbers "
            f"({info.dtypes[bad[0]]}): a radar (SLC) product, not multispectral reflectance.",
            "Use a multispectral raster (e.g. Sentinel-2 or HLS reflectance); for radar, derive intensity "
            "first (Raster calculator) and use a model trained on it.",
        )


def select_bands(
    info: RasterInfo,
    bands: Optional[list[int]] = None,
    n_model_bands: int = 6,
    model_band_names: tuple[str, ...] = DEFAULT_MODEL_BANDS,
) -> tuple[list[int], list[str]]:
    """0-based input band indices in the model's band order, and warnings for the user.

    Explicit `bands` (1-based, as QGIS shows them) win. Otherwise the band descriptions are matched to the
    model's band names; without names the first N bands are taken, with a warning, since a wrong band
    order gives a plausible-looking but wrong map.
    """
    names = tuple(model_band_names)[:n_model_bands] if model_band_names else ()
    label = ", ".join(names) if names else f"{n_model_bands} bands"
    warnings: list[str] = []
    if bands:
        if len(bands) != n_model_bands:
            raise InputError(
                f"{len(bands)} band numbers were given, the model needs {n_model_bands} ({label}).",
                f"Give exactly {n_model_bands} band numbers in the model's order, or leave the bands empty "
                "for automatic selection.",
            )
        bad = [b for b in bands if not 1 <= int(b) <= info.count]
        if bad:
            raise InputError(
                f"Band number(s) {', '.join(map(str, bad))} out of range: the raster has {info.count} bands.",
                f"Use band numbers from 1 to {info.count}.",
            )
        if len(set(bands)) != len(bands):
            warnings.append(f"Bands {bands} repeat a band; each model band usually needs its own input band.")
        return [int(b) - 1 for b in bands], warnings

    if info.count < n_model_bands:
        raise MissingBands(
            f"The raster has {info.count} band(s); the model needs {n_model_bands} ({label}).",
            "Use a multispectral raster with those bands (e.g. Sentinel-2 or HLS), or stack them first "
            "(Raster > Miscellaneous > Build Virtual Raster, 'Place each input file into a separate band').",
        )

    found = _named_bands(info, names)
    if names and any(n in found for n in names):
        chosen: list[int] = []
        missing: list[str] = []
        for name in names:
            hits = found.get(name, [])
            if not hits and name.upper() == "NIR_NARROW" and found.get("NIR_BROAD"):
                hits = found["NIR_BROAD"]
                warnings.append(
                    "No narrow NIR band (Sentinel-2's B8A, Landsat OLI's B5) found; using the broad NIR band "
                    f"(Sentinel-2's B08, Landsat TM/ETM+'s B4: band {hits[0] + 1}) instead. Results may be "
                    "slightly off."
                )
            if not hits:
                missing.append(name)
                continue
            if len(hits) > 1:
                warnings.append(f"Several bands look like {name} ({[h + 1 for h in hits]}); using band {hits[0] + 1}.")
            chosen.append(hits[0])
        if missing:
            raise MissingBands(
                f"The raster names its bands, but none is {', '.join(missing)} (found: "
                f"{_describe_found(info)}).",
                f"Give the band numbers for {label} explicitly in the 'Bands' parameter.",
            )
        return chosen, warnings

    if info.count == 13 and not any(info.descriptions):
        chosen = [S2_L1C_ORDER.index(_norm(a)) for a in ("B02", "B03", "B04", "B8A", "B11", "B12")]
        if n_model_bands == 6 and tuple(n.upper() for n in names) == DEFAULT_MODEL_BANDS:
            warnings.append(
                "The raster's 13 bands are unnamed; assuming Sentinel-2 L1C order and using bands "
                f"{[c + 1 for c in chosen]} (B02, B03, B04, B8A, B11, B12). Set 'Bands' if that is wrong."
            )
            return chosen, warnings

    chosen = list(range(n_model_bands))
    warnings.append(
        f"The raster's bands are not named; assuming bands 1-{n_model_bands} are {label} in that order. "
        "Set 'Bands' if that is wrong."
    )
    return chosen, warnings


def _named_bands(info: RasterInfo, names: tuple[str, ...]) -> dict[str, list[int]]:
    """The raster's 0-based bands by the band name their descriptions (or band files' names) stand for."""
    found: dict[str, list[int]] = {}
    for index, canonical in enumerate(band_names(info.descriptions, names)):
        if canonical:
            found.setdefault(canonical, []).append(index)
    return found


def band_names(labels: Sequence[Optional[str]], names: tuple[str, ...] = DEFAULT_MODEL_BANDS
               ) -> tuple[Optional[str], ...]:
    """Per label (a band description or a band file's name), the band name it stands for: one of `names` first,
    else any band name known here; None for a label that names no spectral band (a Landsat panchromatic or
    thermal band too)."""
    known = tuple(BAND_ALIASES) if names else ()
    lookup = tuple(dict.fromkeys((*names, *known)))  # model names first, then every band name we know
    landsat = landsat_band_names(labels)  # Landsat's band numbers are not Sentinel-2's
    return tuple(_band_canonical(landsat[index] if landsat else label, lookup) for index, label in enumerate(labels))


def names_give_bands(info: RasterInfo, names: tuple[str, ...] = DEFAULT_MODEL_BANDS) -> bool:
    """Whether the raster's band names give every one of the model's bands (the broad NIR standing in for the
    narrow one), so that they are chosen by name whatever its product and band order."""
    return not missing_names(_named_bands(info, names), names)


def missing_names(found: Collection[str], names: tuple[str, ...] = DEFAULT_MODEL_BANDS) -> list[str]:
    """Those of the model's band `names` that no band in `found` gives (the broad NIR standing in for the narrow
    one, as the band choice takes it)."""
    return [n for n in names if n not in found and not (n.upper() == "NIR_NARROW" and "NIR_BROAD" in found)]


def describe_choice(info: RasterInfo, bands: list[int], names: tuple[str, ...]) -> str:
    """The chosen bands as the model takes them, each with the input band's own name shortened to what tells
    the bands apart: 'BLUE (SR_B2), GREEN (SR_B3), …' for a stack of `LC09_L2SP_…_SR_B2` files."""
    labels = [info.descriptions[b] if b < len(info.descriptions) else None for b in bands]
    named = [label.split(",")[0].strip() for label in labels if label]
    prefix = os.path.commonprefix(named) if len(named) > 1 else ""
    cut = max(prefix.rfind(c) for c in "_.-") + 1
    words = [label.split(",")[0].strip()[cut:] if label else "" for label in labels]
    names = names if len(names) == len(bands) else tuple(f"channel {i}" for i in range(1, len(bands) + 1))
    return ", ".join(f"{name} ({word})" if word and _norm(word) != _norm(name) else name
                     for name, word in zip(names, words))


def _describe_found(info: RasterInfo) -> str:
    named = [f"{i + 1}={d}" for i, d in enumerate(info.descriptions) if d]
    return ", ".join(named) if named else "no names"


def choose_bands(info: RasterInfo, requested: Optional[list[int]], spec=None) -> tuple[list[int], list[str]]:
    """0-based input bands for the model (its spec's bands, else Sen1Floods11's six) and warnings."""
    if spec is None:
        bands, warnings = select_bands(info, requested)
    else:
        bands, warnings = select_bands(info, requested, spec.channels, tuple(spec.bands) if spec.bands else ())
    check_band_types(info, bands)
    return bands, warnings
