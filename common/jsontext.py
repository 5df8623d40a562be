"""JSON as every reader takes it: strict JSON (RFC 8259) has no NaN or Infinity, which Python's json writes
by default and which R's jsonlite, JavaScript and many other readers refuse. Undefined values are null."""
from __future__ import annotations

import json
import math

import numpy as np


def finite(value):
    """`value` with every NaN or infinite number, at any depth, made None; numpy scalars and arrays made plain."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [finite(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def json_text(data, indent: int | None = 1) -> str:
    """`data` as strict JSON text, undefined numbers as null, ending in a newline when indented."""
    return json.dumps(finite(data), indent=indent, allow_nan=False) + ("\n" if indent is not None else "")
