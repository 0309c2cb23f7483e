"""Apple MDM wire models: commands, device reports, MDM-server webhooks, enrollment IDs.

Pure data and parsing, no I/O, so workflows (inside the Temporal sandbox), activities,
the relay and the simulator all share one definition of the protocol.
"""
