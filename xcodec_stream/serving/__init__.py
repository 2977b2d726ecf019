"""Serving: wire protocol (pure), batching worker, rooms, asyncio WebSocket server."""
