"""Tile geometry and the out-of-core block engine."""
