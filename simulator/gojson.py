"""JSON bytes as Go's ``encoding/json`` writes them, for MicroMDM's responses and webhooks.

MicroMDM answers through ``json.Encoder`` with ``SetIndent("", "  ")`` (a trailing newline)
and posts webhooks with ``json.MarshalIndent(v, "", "  ")`` (none). Both escape ``<``,
``>`` and ``&`` for HTML and write other non-ASCII text as UTF-8. Key order is the
caller's: build dicts in the Go struct's field order.
"""

from __future__ import annotations

import json
from typing import Any

# Go escapes these even inside strings; they never occur outside strings in JSON.
_GO_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def marshal_indent(value: Any) -> bytes:
    """``json.MarshalIndent(value, "", "  ")``."""
    return json.dumps(value, indent=2, ensure_ascii=False).translate(_GO_ESCAPES).encode()


def encode(value: Any) -> bytes:
    """``json.NewEncoder(w)`` with ``SetIndent("", "  ")``: ``Encode`` adds a newline."""
    return marshal_indent(value) + b"\n"
