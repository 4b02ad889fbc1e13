"""Tooling around the services, never imported by them: ``pdserve up``, ``pdserve bench``,
``sim-http``, the embedded-model converter, and the process and port helpers that the
bench and the tests share. Only ``pdserve.cli`` (the entry point) imports it."""
