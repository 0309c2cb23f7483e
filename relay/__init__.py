"""The webhook relay: device answers from the MDM server's webhook into Temporal signals."""
