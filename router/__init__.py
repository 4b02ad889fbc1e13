"""pdserve router: OpenAI HTTP API in front of prefill and decode workers."""
