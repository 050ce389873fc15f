"""Emulated vendor clouds, faithful to the seeds: for the demo, the tests and the benchmarks.

A layer above the runtime: emulators may import ``protocols`` and ``gateway.mqtt`` (the codec),
but nothing under ``gateway/`` imports an emulator except the demo, and only the ``simulate``
and ``demo`` commands load one (through ``gateway.vendors.emulator_module``). They need the
``emulators`` extra (``websockets``), which the ``test`` extra includes.

Each vendor package ``emulators.<vendor>`` provides:

- ``add_arguments(parser)`` and ``async serve(args)`` for ``cloud2mqtt simulate <vendor>``;
  ``serve`` raises ``emulators.base.PortInUse`` when a port it must listen on is taken, and
  ``--print-config`` (added by ``emulators.base.add_common_arguments``) prints the
  ``[[accounts]]`` table as TOML as well;
- ``demo_cloud(devices=...)``, the cloud as ``cloud2mqtt demo`` runs it;
- a cloud class with ``async start()``/``async stop()`` that tests and the demo run in-process,
  built from its knobs as keywords or as one ``<Vendor>Options`` (``emulators.base.CloudOptions``;
  ``simulate`` builds it with ``Options.from_args``),
  a ``control`` object (or HTTP endpoint) to inject faults, and ``account_config()`` returning the
  ``[[accounts]]`` table that points a gateway at it.
"""
