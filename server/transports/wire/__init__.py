"""Wire codecs: bytes and strings in, frames and packets out. No sockets, no sessions.

``websocket`` is RFC 6455 (frames, close codes, the opening handshake); ``socketio`` is
Engine.IO v4 and Socket.IO v5 packets. The connection protocol in
:mod:`server.transports.sio_direct` reads bytes, feeds these codecs and dispatches what they return.
"""
