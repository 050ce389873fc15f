"""The emulator tests' fixtures: ``http`` (``tests.emulator_fixtures``)."""

from tests.emulator_fixtures import http

__all__ = ["http"]
