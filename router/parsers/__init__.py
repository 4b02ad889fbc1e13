"""Output parsers of the chat front end: reasoning (``--reasoning-parser``) and tool calls
(``--tool-call-parser``), by vLLM 0.32's names and rules, written without vLLM.

Contract (details in ``router.parsers.base``): the chat route builds one parser per request
from ``router.parsers.registry``; a non-streamed response calls ``split`` then ``extract`` on
the whole output; a streamed one feeds each text delta through the reasoning stream, then
the content it lets through into the tool stream, and flushes both once at the end. What
the streams return concatenates (tool calls merged by ``index``) to the non-streamed result.
Per-format rules and where they differ from vLLM: each module's docstring and docs/parsers.md.
"""
