"""Every call into Temporal made from outside a workflow: the API, the relay and the
scheduled-start activity all go through here, naming workflow handlers by typed method.

- :mod:`.visibility`: look-ups in Temporal's visibility store (which runs exist);
- :mod:`.starts`: starting fleet runs (with the store's holds) and AllCommandResponse runs;
- :mod:`.runs`: a run's or a device's state, a fleet run's summary and device pages,
  and per-device run listings;
- :mod:`.controls`: operator controls (the fleet run's ``control`` Update, cancel);
- :mod:`.signals`: device reports and enrollment resets delivered to runs;
- :mod:`.schedules`: Temporal Schedules of periodic starts.

Runs started one per device before fleet runs (:class:`workflows.engine.MdmWorkflow`)
are still signalled and queried here, by the same typed references, until the last of
them has ended.
"""
