"""Run inside the QGIS desktop (qgis --code): shows the demo scene and its styled flood map, opens the
Map floods dialog on it, saves screenshots of both, then quits. Driven by scripts/screenshots."""

import os

import processing
from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication
from qgis.utils import iface, plugins

OUT = os.environ["FLOODMAPPER_SHOTS"]
SCENE = os.environ["FLOODMAPPER_SCENE"]
FLOOD = os.environ["FLOODMAPPER_FLOOD"]
state = {}


def load_layers():
    scene = QgsRasterLayer(SCENE, "demo scene")
    renderer = scene.renderer()
    if hasattr(renderer, "setRedBand"):
        renderer.setRedBand(3)
        renderer.setGreenBand(2)
        renderer.setBlueBand(1)
    QgsProject.instance().addMapLayer(scene)
    flood = QgsRasterLayer(FLOOD, "demo scene – flood")  # its flood.qml sidecar styles it
    QgsProject.instance().addMapLayer(flood)
    iface.setActiveLayer(scene)
    iface.mapCanvas().setExtent(scene.extent())
    iface.mapCanvas().refresh()
    state["scene"] = scene
    QTimer.singleShot(4000, shot_map)


def shot_map():
    iface.mainWindow().grab().save(os.path.join(OUT, "qgis-flood-result.png"))
    dialog = processing.createAlgorithmDialog(
        "floodmapper:map_floods", {"INPUT": state["scene"].id(), "BACKEND": 1})
    dialog.show()
    state["dialog"] = dialog
    QTimer.singleShot(2500, shot_dialog)


def shot_dialog():
    state["dialog"].grab().save(os.path.join(OUT, "qgis-map-floods-dialog.png"))
    with open(os.path.join(OUT, "screenshots.ok"), "w") as fh:
        fh.write("floodmapper loaded: %s\n" % ("floodmapper" in plugins))
    QTimer.singleShot(500, QApplication.instance().quit)


iface.mainWindow().resize(1400, 860)
QTimer.singleShot(3000, load_layers)
