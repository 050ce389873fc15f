"""Connectors, one per vendor (the vendor list itself is ``gateway.vendors``), and the
``Session`` base they share (``gateway.connectors.session``)."""
