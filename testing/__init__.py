"""Helpers shared by the tests and the benchmarks: a tiny CLIP-shaped model, images, an image server."""
