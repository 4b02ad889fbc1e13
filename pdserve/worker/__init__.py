"""The worker runtime both roles share: config, server lifecycle, registration and KV feed,
metrics, the error→status map, main. A role (prefill_worker/, decode_worker/) adds its
defaults (a ``WorkerRole``) and its servicer."""
