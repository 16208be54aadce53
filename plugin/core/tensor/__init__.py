"""Tensor-to-tensor transport: the plugin tiles, normalises and stitches; the server only runs the model.

    reader (windowed tile reads) -> inputs (normalise, location) -> codec (request body) -> POST /pooling
    -> codec (logits) -> tiling (cos² blending in row bands) -> writer (class map rows) ; runner drives it
"""
