"""Starting workflows and the HTTP API (NanoCMD-compatible ``/v1/...`` plus our own)."""
