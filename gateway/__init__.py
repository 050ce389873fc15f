"""The asyncio runtime: config, CLI, supervisor, connectors, MQTT, simulators."""
