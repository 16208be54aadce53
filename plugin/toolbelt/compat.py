"""The few names that differ between QGIS 3.22 (Qt5) and QGIS 3.38+/4.x (Qt6), resolved once."""

from __future__ import annotations

from qgis.core import Qgis

if Qgis.versionInt() >= 33800:  # QgsField takes QMetaType.Type; QVariant.Type is gone in Qt6
    from qgis.PyQt.QtCore import QMetaType

    FIELD_INT = QMetaType.Type.Int
    FIELD_DOUBLE = QMetaType.Type.Double
    FIELD_STRING = QMetaType.Type.QString
else:
    from qgis.PyQt.QtCore import QVariant

    FIELD_INT = QVariant.Type.Int
    FIELD_DOUBLE = QVariant.Type.Double
    FIELD_STRING = QVariant.Type.String

if hasattr(Qgis, "WkbType"):  # 3.30+
    WKB_POLYGON = Qgis.WkbType.Polygon
else:
    from qgis.core import QgsWkbTypes

    WKB_POLYGON = QgsWkbTypes.Type.Polygon

if hasattr(Qgis, "GeometryType"):  # 3.30+
    POLYGON_GEOMETRY = Qgis.GeometryType.Polygon
else:
    from qgis.core import QgsWkbTypes

    POLYGON_GEOMETRY = QgsWkbTypes.GeometryType.PolygonGeometry


def set_layer_abstract(layer, text: str) -> None:
    """The layer's abstract (Layer Properties ▸ QGIS Server): QgsMapLayer.setAbstract is deprecated in 3.38+."""
    properties = layer.serverProperties()
    if hasattr(properties, "setAbstract"):
        properties.setAbstract(text)
    else:
        layer.setAbstract(text)


def layer_abstract(layer) -> str:
    properties = layer.serverProperties()
    return properties.abstract() if hasattr(properties, "abstract") else layer.abstract()
