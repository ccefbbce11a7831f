"""The streaming core: sessions, chunk log, emitter, commands, manager, registry; no transport."""
