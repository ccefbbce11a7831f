"""Redis mode: store, journal, relay, lease and takeover; plugs into the core."""
