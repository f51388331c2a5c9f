"""Producers: the catalogue CSV and change events turned into jobs."""
