"""The ``bzpeer`` command line: one entry point for running, importing, replaying and status."""
