"""Guards and operations: access, rate limits, metrics, logs."""
