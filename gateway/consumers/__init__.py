"""Consumers of the event bus (``gateway.events``) beyond the MQTT publisher: each one's
constructor does nothing; ``start()`` subscribes, ``stop()`` unsubscribes."""
