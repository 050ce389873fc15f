"""The asyncio runtime: config, CLI, supervisor, connectors, MQTT. (The vendor emulators are the
separate top-level package ``emulators``; only ``simulate`` and ``demo`` load them.)"""
