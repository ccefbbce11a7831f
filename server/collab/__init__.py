"""Collaborative documents (PROTOCOL.md "Collaborative documents (Yjs)").

Yjs documents served over the y-websocket protocol (pycrdt, pycrdt-websocket), their
stores, and the AI peer that writes a session's answer into a document in the shapes
Tiptap's y-prosemirror binding gives StarterKit's nodes and marks. No transport code here:
the WebSocket route is ``server.transports.collab_api`` and the Redis store
``server.cluster``.
"""
