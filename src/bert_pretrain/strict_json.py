"""JSON as the standard defines it, for everything the project prints or writes.

Python's `json.dumps` writes a non-finite float as the bare words `NaN`, `Infinity` or `-Infinity`,
which no strict JSON parser reads (JavaScript's `JSON.parse`, jq, Go, Rust's serde_json). A diverged
loss or an empty average is exactly such a float, so here every non-finite float becomes `null`
("no number"), and the dump is made with `allow_nan=False`, so anything that slips past is an error
rather than an invalid file. `null` rather than a string such as "nan": a reader that expects a
number gets the one value JSON has for a missing one, not text that looks like a number.
"""

from __future__ import annotations

import json
import math


def finite(value):
    """`value` with every non-finite float (numpy's too: they subclass float) replaced by None, through
    dicts, lists and tuples (tuples become lists, as JSON writes them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value, **kwargs) -> str:
    """`json.dumps` of `value` as strict JSON (see the module docstring); keyword arguments pass through."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
