"""Render a PNG preview of a flood map with QGIS: the input in true colour, the styled water layer over it,
a legend and the area figures (flood water and permanent water, each with its area, for a map compared with
a reference). Usage: render_preview.py INPUT.tif FLOOD.tif OUT.png [--title TEXT] [--note TEXT]"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("input")
    ap.add_argument("flood")
    ap.add_argument("png")
    ap.add_argument("--title", default="Flood Mapper")
    ap.add_argument("--note", default="", help="a last legend line, e.g. what the water was compared with")
    ap.add_argument("--size", type=int, default=900)
    args = ap.parse_args(argv)

    plugins = ROOT / "build" / "test-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "floodmapper"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(plugins))

    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        # every QGIS object lives inside render(): freed when it returns, before exitQgis()
        return render(args)
    finally:
        app.exitQgis()


def render(args) -> int:
    from qgis.core import (
        QgsContrastEnhancement,
        QgsMapRendererParallelJob,
        QgsMapSettings,
        QgsMultiBandColorRenderer,
        QgsRasterLayer,
    )
    from qgis.PyQt.QtCore import QSize, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QPainter

    from floodmapper.plugin.core.flood_extent import class_areas, is_extent_map
    from floodmapper.plugin.core.stats import compute_stats
    from floodmapper.plugin.processing.postprocessor import (
        FLOOD_COLOR,
        PERMANENT_WATER_COLOR,
        WATER_COLOR,
        style_flood_layer,
    )

    base = QgsRasterLayer(args.input, "input")
    flood = QgsRasterLayer(args.flood, "flood")
    if not (base.isValid() and flood.isValid()):
        print("cannot open the input or the flood map", file=sys.stderr)
        return 1
    # true colour: RED, GREEN, BLUE by band description when present, else 3, 2, 1
    # QGIS names bands "Band 3: RED" when the file has descriptions
    descs = [(base.bandName(i) or "").split(":")[-1].strip().upper() for i in range(1, base.bandCount() + 1)]

    def find(*keys: str, default: int) -> int:
        for i, desc in enumerate(descs, 1):
            if desc in keys:
                return i
        return min(default, base.bandCount())

    red, green, blue = find("RED", "B04", default=3), find("GREEN", "B03", default=2), find("BLUE", "B02", default=1)
    renderer = QgsMultiBandColorRenderer(base.dataProvider(), red, green, blue)
    for band, setter in ((red, renderer.setRedContrastEnhancement), (green, renderer.setGreenContrastEnhancement),
                         (blue, renderer.setBlueContrastEnhancement)):
        ce = QgsContrastEnhancement(base.dataProvider().dataType(band))
        stats = base.dataProvider().cumulativeCut(band, 0.02, 0.98)
        ce.setMinimumValue(stats[0])
        ce.setMaximumValue(stats[1])
        ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
        setter(ce)
    base.setRenderer(renderer)
    extent = is_extent_map(args.flood)
    style_flood_layer(flood, extent=extent)
    flood.renderer().setOpacity(0.85)

    extent = base.extent()
    w = args.size
    h = max(1, int(w * extent.height() / extent.width()))
    settings = QgsMapSettings()
    settings.setLayers([flood, base])
    settings.setDestinationCrs(base.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(w, h))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()

    s = compute_stats(args.flood)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    font = QFont("DejaVu Sans", 11)
    painter.setFont(font)
    lines = [args.title, f"Water: {s.water_area_km2:.3f} km²  ({s.water_fraction:.1%} of valid pixels)"]
    if extent:
        areas = class_areas(args.flood)
        keys = [(FLOOD_COLOR, f"Flood water: {areas[1][1]:.3f} km²"),
                (PERMANENT_WATER_COLOR, f"Permanent water: {areas[2][1]:.3f} km²")]
    else:
        keys = [(WATER_COLOR, "Water (model)")]
    notes = [args.note] if args.note else []
    rows = len(lines) + len(keys) + len(notes)
    painter.fillRect(10, 10, 470, 26 * rows + 14, QColor(255, 255, 255, 225))
    painter.setPen(QColor(20, 20, 20))
    for i, text in enumerate(lines):
        painter.drawText(20, 32 + 26 * i, text)
    for i, (color, text) in enumerate(keys):
        y = 32 + 26 * (len(lines) + i) - 14
        painter.fillRect(20, y, 18, 18, color)
        painter.drawRect(20, y, 18, 18)
        painter.drawText(46, y + 14, text)
    for i, text in enumerate(notes):
        painter.drawText(20, 32 + 26 * (len(lines) + len(keys) + i), text)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.end()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    ok = image.save(args.png, "PNG")
    figures = "; ".join(text for _, text in keys) if extent else f"water {s.water_area_km2:.3f} km²"
    print(f"preview: {args.png} ({w}x{h}) {figures}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
