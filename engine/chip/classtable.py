"""The user's class table for chipping: from a small class file, a class field's distinct values, or one name.

A class file is YAML or JSON: a list (or ``{classes: [...]}``) of ``{name, value, colour}`` records, where
``value`` is what marks the class in the label source (a class raster's pixel value or the class field's value)
and ``colour`` ``[r, g, b]`` is optional. Example::

    - {name: building, value: 1, colour: [220, 40, 40]}
    - {name: water, value: 5}
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.classes import BACKGROUND, BACKGROUND_COLOR, ClassTable, default_color
from engine.core.errors import InputError

DEFAULT_CLASS_NAME = "object"
"""Class of every feature of a vector layer chipped without a class field or ``--class-name``."""


def _record(item: Any, path: Path, index: int) -> dict[str, Any]:
    if not isinstance(item, Mapping) or not str(item.get("name", "")).strip():
        raise InputError(f"{path}: entry {index + 1}: expected a mapping with a 'name', found {item!r}")
    colour = item.get("colour", item.get("color"))
    if colour is not None:
        ok = isinstance(colour, Sequence) and len(colour) == 3
        if not ok or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
            raise InputError(f"{path}: class {item['name']!r}: expected colour [r, g, b] in 0..255, found {colour!r}")
    value = item.get("value")
    if value is not None and not isinstance(value, (int, str)):
        raise InputError(f"{path}: class {item['name']!r}: expected an integer or text value, found {value!r}")
    return {"name": str(item["name"]).strip(), "value": value, "colour": list(colour) if colour else None}


def load_class_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records ``{name, value, colour}`` of a YAML/JSON class file (InputError naming the file if malformed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: expected a readable class file (YAML or JSON), could not read it: {exc}") from exc
    try:
        import yaml

        data = yaml.safe_load(text)  # JSON is YAML too
    except Exception as exc:  # yaml.YAMLError; kept broad so a JSON-only reader gives the same message
        raise InputError(f"{path}: expected a YAML or JSON class list, found a parse error: {exc}") from exc
    if isinstance(data, Mapping):
        data = data.get("classes")
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty list of classes {{name, value, colour}}, found {data!r}")
    records = [_record(item, path, i) for i, item in enumerate(data)]
    names = [r["name"] for r in records]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{path}: expected unique class names, found {repeated} more than once")
    return records


def _table(records: Sequence[Mapping[str, Any]]) -> ClassTable:
    colors = tuple(tuple(r["colour"]) if r.get("colour") else default_color(i) for i, r in enumerate(records))
    return ClassTable(tuple(r["name"] for r in records), colors, tuple(r.get("value") for r in records))  # type: ignore[arg-type]


def value_key(value: Any) -> str:
    """Attribute and file values compare as text (a field of integers matches ``value: 3`` and ``value: "3"``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def vector_classes(
    found: Iterable[Any], records: Sequence[Mapping[str, Any]] | None, class_name: str | None, where: str
) -> ClassTable:
    """Object classes of a vector layer (no background): from the class file, else the field's distinct values.

    ``found``: the class field's distinct values (empty when there is no field: one class ``class_name``).
    Values become text. A value the class file lacks is an InputError naming them.
    """
    values = sorted({value_key(v) for v in found if v is not None})
    if records is None:
        if not values:
            return ClassTable((class_name or DEFAULT_CLASS_NAME,), (default_color(0),), (None,))
        return ClassTable(tuple(values), tuple(default_color(i) for i in range(len(values))), tuple(values))
    table = _table(records)
    known = {value_key(v) for v in table.values if v is not None}
    if values:
        missing = [v for v in values if v not in known]
        if missing:
            raise InputError(
                f"{where}: class values {missing[:10]} are not in the class table (values {sorted(known)[:10]})"
            )
    return ClassTable(table.names, table.colors, tuple(None if v is None else value_key(v) for v in table.values))


def with_background(objects: ClassTable) -> ClassTable:
    """Segmentation classes of vector labels: background (index 0, pixels outside every polygon) + the objects."""
    if BACKGROUND in objects.names:
        return objects
    return ClassTable((BACKGROUND, *objects.names), (BACKGROUND_COLOR, *objects.colors), (None, *objects.values))


def raster_classes(found: Iterable[int], records: Sequence[Mapping[str, Any]] | None, where: str) -> ClassTable:
    """Classes of a class raster: the class file's (every value found must be in it), else one per value found."""
    values = sorted({int(v) for v in found})
    if records is None:
        names = tuple(BACKGROUND if v == 0 else f"class_{v}" for v in values)
        colors = tuple(BACKGROUND_COLOR if v == 0 else default_color(i) for i, v in enumerate(values))
        return ClassTable(names, colors, tuple(values))
    table = _table(records)
    try:
        table_values = {int(v) for v in table.values if v is not None}
    except (TypeError, ValueError):
        raise InputError(f"{where}: a class raster needs integer class values, found {list(table.values)}") from None
    missing = [v for v in values if v not in table_values]
    if missing:
        raise InputError(
            f"{where}: raster values {missing[:10]} are not in the class table (values {sorted(table_values)[:10]})"
        )
    return ClassTable(table.names, table.colors, tuple(None if v is None else int(v) for v in table.values))


def detection_subset(seg: ClassTable) -> tuple[ClassTable, np.ndarray]:
    """Detection classes of a class raster (every class but the background) and the seg → det index lookup.

    Each connected blob of a detection class becomes a box (:mod:`engine.data.boxes`); -1 marks non-objects.
    """
    keep = [i for i, name in enumerate(seg.names) if name != BACKGROUND]
    lookup = np.full(256, -1, np.int64)
    lookup[keep] = np.arange(len(keep))
    det = ClassTable(
        tuple(seg.names[i] for i in keep), tuple(seg.colors[i] for i in keep), tuple(seg.values[i] for i in keep)
    )
    return det, lookup


def value_lookup(table: ClassTable, ignore: int) -> tuple[np.ndarray, int]:
    """Class raster value → class index table (``ignore`` for values not in it) and its offset (min value)."""
    values = [int(v) for v in table.values if v is not None]
    low = min(0, *values)
    lookup = np.full(max(values) - low + 1, ignore, np.uint8)
    for index, value in enumerate(table.values):
        if value is not None:
            lookup[int(value) - low] = index
    return lookup, low
