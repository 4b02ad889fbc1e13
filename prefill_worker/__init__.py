"""pdserve prefill worker: computes prompt KV and hands it to decode workers over NIXL."""
