"""Model preparation: a TerraTorch training run turned into a folder vLLM can serve."""
