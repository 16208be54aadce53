"""The outputs every flood-map algorithm returns: the map, its pixel and area figures (flood and permanent water
too when it was compared with a reference), and its water polygons when they were asked for."""

from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingFeedback

from ..core.jobs import MapFloodsResult
from .reference_inputs import extent_values
from .water_polygons import write_water_polygons


def flood_map_outputs(alg: QgsProcessingAlgorithm, parameters: dict, context: QgsProcessingContext,
                      feedback: QgsProcessingFeedback, result: MapFloodsResult) -> dict:
    """OUTPUT, WATER_PIXELS, VALID_PIXELS, WATER_AREA_KM2, the flood extent's figures and WATER_POLYGONS (traced
    now, into the sink the parameters name) of `alg`, which declares those names."""
    outputs = {
        alg.OUTPUT: result.output_path,
        alg.WATER_PIXELS: result.water_pixels,
        alg.VALID_PIXELS: result.valid_pixels,
        alg.WATER_AREA_KM2: result.water_area_km2,
        **extent_values(result),
    }
    polygons_id = write_water_polygons(alg, parameters, alg.WATER_POLYGONS,
                                       alg.parameterAsDouble(parameters, alg.MIN_AREA, context),
                                       context, feedback, result.output_path)
    if polygons_id:
        outputs[alg.WATER_POLYGONS] = polygons_id
    return outputs
