"""Protocols: compositions of ordinary runs (each its own run directory) and the aggregation of their
``summary.json`` files into tables."""
