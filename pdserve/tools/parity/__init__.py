"""Differential battery: the same OpenAI requests to two servers, answers compared.

``cases`` is the battery, ``client`` sends one case and reads the answer (JSON or SSE),
``compare`` compares one pair of answers, ``known`` matches mismatches against the list of
known differences, and ``python -m pdserve.tools.parity`` runs it all (docs/parity.md).
It speaks HTTP only: any two OpenAI-compatible servers can be compared, and it imports no
engine.
"""
