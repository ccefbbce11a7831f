"""The transports: HTTP, Socket.IO (both paths), plain WebSocket, SSE, operations routes."""
