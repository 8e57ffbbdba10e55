"""Shared pieces used by every pipeline stage."""
