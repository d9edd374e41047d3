"""Applications built on Voxgate's embedding API."""
