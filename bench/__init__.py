"""Reproducible benchmarks: one command per figure in ``bench/RESULTS.md``.

- ``python -m bench.mqtt_publish``      MQTT publish msg/s: our client vs gmqtt, aiomqtt, raw
- ``python -m bench.kernels``           `_speedups` compiled/pure ratios (JSON)
- ``pytest bench/ --benchmark-enable``  the same kernels as pytest-benchmark micro-benchmarks
- ``python -m bench.load ...``          Tencent WS push → gateway → mosquitto, vs a naive bridge
- ``python -m bench.scale ...``         N idle Tencent push connections in one gateway
"""
