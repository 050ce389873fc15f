"""Fixtures shared by the tests that drive an emulated cloud by hand (tests/emulators imports
them in its conftest; a test module elsewhere can import the one it uses)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

__all__ = ["http"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session
