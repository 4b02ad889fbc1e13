"""pdserve: disaggregated prefill/decode serving on vLLM (shared package)."""

__version__ = "0.1.0"
