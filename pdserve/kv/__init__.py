"""KV block identity (hashing) and vLLM's KV events: shared by router and workers."""
