"""MDM workflows: each file is one NanoCMD-compatible workflow built on the step engine."""
