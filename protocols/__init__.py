"""Sans-I/O vendor protocols: bytes and dicts in, bytes and events out. No asyncio here."""
