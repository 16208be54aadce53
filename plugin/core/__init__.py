"""QGIS-free logic: vLLM client, transports, raster I/O, model spec, local engine.

Nothing in this package may import `qgis` (tests/unit/test_layout.py enforces it), so it runs and
tests in plain Python, and in the vLLM environment's Python for the offline batch.
"""
