"""Clients: asyncio client library, file and microphone loopback."""
