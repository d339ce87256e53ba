"""Code every Baton service shares: events, stream names, settings, logging, storage, broker helpers."""
