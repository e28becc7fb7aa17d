"""Event and command payloads, one module per topic."""
