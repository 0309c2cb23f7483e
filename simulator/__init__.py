"""A NanoMDM-compatible MDM server with a fleet of simulated Apple devices.

Stands in for NanoMDM plus real devices when none are configured (``make run``), in
end-to-end tests and in benchmarks: mdmflow enqueues and pushes over the same HTTP API
and receives the same webhooks it would from NanoMDM 0.9. It also answers as MicroMDM
1.13 (``/v1/commands``, ``/v1/push``, ``/push``, ``/v1/devices``); MicroMDM mode
(:func:`simulator.fleet.micromdm_config`, ``--micromdm``) posts MicroMDM's webhooks.
"""
