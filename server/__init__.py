"""The streaming server: aiohttp + python-socketio sessions that stream AI text to editors."""
