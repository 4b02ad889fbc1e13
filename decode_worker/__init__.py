"""pdserve decode worker: pulls prompt KV from a prefill worker over NIXL and streams tokens."""
