"""Kept so code written against the old path still imports; the model contract (metadata schema, writer and
reader) lives in :mod:`engine.core.modelio`."""

from engine.core.modelio import *  # noqa: F403
