"""Strict JSON out: what the toolkit writes is read by R's jsonlite, JavaScript and jq alike."""
import json
import math

import numpy as np
import pytest

from common.jsontext import finite, json_text
from conftest import not_json


def test_undefined_numbers_become_null_at_any_depth():
    data = {"r": math.nan, "ci": [np.float32("nan"), 0.25], "rate": math.inf, "deep": {"x": (-math.inf, 1)},
            "n": np.int64(3), "ok": np.bool_(True), "mean": np.float64(0.5), "values": np.array([1.5, np.nan]),
            "text": "NaN stays text"}
    text = json_text(data)
    assert text.endswith("}\n") and json_text([1], indent=None) == "[1]"
    assert json.loads(text, parse_constant=not_json) == {
        "r": None, "ci": [None, 0.25], "rate": None, "deep": {"x": [None, 1]}, "n": 3, "ok": True, "mean": 0.5,
        "values": [1.5, None], "text": "NaN stays text"}
    assert finite(2.5) == 2.5 and finite(None) is None
    with pytest.raises(AssertionError, match="NaN is not JSON"):
        json.loads(json.dumps({"r": math.nan}), parse_constant=not_json)  # what Python's json writes by default
