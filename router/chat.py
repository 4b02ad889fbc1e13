"""Chat messages → the conversation a chat template renders, as ``vllm serve`` 0.32 builds
it for a text-only model (vllm/renderers/chat_utils.py ``parse_chat_messages``, and
renderers/hf.py ``safe_apply_chat_template`` for the template's arguments).

What reaches the template, message by message:
- ``content``: a string, text parts joined with ``"\\n"``; or, for a template that loops over
  a message's content (vLLM's "openai" content format, detected from the template's
  syntax tree as vLLM detects it), the list of ``{"type": "text", "text": ...}`` parts.
  Text-like parts are ``text``, ``input_text``, ``output_text``, ``refusal``, ``thinking``;
  media parts (images, audio, video, embeddings) are refused with a 400 naming the part.
- ``name`` when a string; an assistant's ``tool_calls`` (arguments parsed into objects,
  malformed ones become ``{}``) and ``reasoning`` (also as ``reasoning_content``); a tool
  message's ``tool_call_id`` (its text parts joined into a string); a developer message's
  ``tools``. Developer messages become system messages (merged into one, first) when the
  template does not name the developer role.
- Template arguments: the request's ``chat_template_kwargs`` with ``add_generation_prompt``,
  ``continue_final_message``, ``documents``, ``reasoning_effort`` (and ``enable_thinking``
  from it) over them, and ``tools``; only those the template reads or the tokenizer's
  ``apply_chat_template`` names reach it.

Errors are ``ChatError`` with the OpenAI ``param`` they concern; the routes answer 400.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox

log = logging.getLogger(__name__)

TEXT_PART_TYPES = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}
TEXT_PART_TYPES |= {"thinking": "thinking"}
MEDIA_PART_TYPES = frozenset(
    {
        "image_url",
        "input_image",
        "image_pil",
        "image_embeds",
        "audio_url",
        "input_audio",
        "audio_embeds",
        "video_url",
        "video_embeds",
        "prompt_embeds",
    }
)
CONTENT_FORMATS = ("auto", "string", "openai")
_BILLING_HEADER = "x-anthropic-billing-header"  # vLLM drops this line from system text


class ChatError(ValueError):
    """A chat request vLLM's server refuses with a 400; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def load_template(value: str) -> str | None:
    """``--chat-template``: a file's contents, or the template itself, as vLLM's
    ``load_chat_template`` reads it; "" = the model's own."""
    if not value:
        return None
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text()
    except OSError:
        pass
    if any(c in value for c in "{}\n"):
        return value
    raise ValueError(f"chat template {value!r} is neither a file nor a template (it has no {{, }} or newline)")


TOOL_STRICT_LEVELS = ("auto", "function", "parameter")  # vLLM's --tool-strict-level, in order


@dataclass(frozen=True)
class ChatOptions:
    """The server's side of chat rendering (router flags, as ``vllm serve``'s)."""

    template: str | None = None  # --chat-template (loaded): instead of the model's
    trust_request_template: bool = False  # --trust-request-chat-template
    content_format: str = "auto"  # --chat-template-content-format: auto | string | openai
    reasoning_parser: str = ""  # --reasoning-parser: router/parsers/registry.py; "" = none
    tool_call_parser: str = ""  # --tool-call-parser; "" = none
    enable_auto_tool_choice: bool = False  # --enable-auto-tool-choice: tool_choice "auto" runs the parser
    tool_strict_level: str = "auto"  # --tool-strict-level: api/tool_grammar.py


class ChatTokenizer(Protocol):
    def chat_template(self, override: str | None = None, tools: Sequence[Mapping[str, Any]] | None = None) -> str: ...

    def render_chat(self, conversation: list[dict[str, Any]], template: str, kwargs: Mapping[str, Any]) -> str: ...

    @property
    def chat_template_params(self) -> frozenset[str]: ...


def render(
    tok: ChatTokenizer,
    messages: Sequence[Mapping[str, Any]],
    options: ChatOptions,
    kwargs: Mapping[str, Any],
    request_template: str | None = None,
) -> str:
    """The prompt text of a chat request: ``messages`` as the client sent them,
    ``kwargs`` from ``template_kwargs``. ChatError (a 400) for what vLLM refuses."""
    if request_template is not None and not options.trust_request_template:
        raise ChatError(
            "Chat template is passed with request, but --trust-request-chat-template is not set. "
            "Refused request with untrusted chat template.",
            "chat_template",
        )
    try:
        template = tok.chat_template(request_template or options.template, kwargs.get("tools"))
    except ValueError as exc:
        raise ChatError(str(exc), "messages") from None
    fmt = options.content_format
    openai_format = loops_over_content(template) if fmt == "auto" else fmt == "openai"
    conv = conversation(messages, openai_format, mentions_developer_role(template))
    try:
        return tok.render_chat(conv, template, accepted(template, kwargs, tok.chat_template_params))
    except (jinja2.TemplateError, ValueError, TypeError, KeyError) as exc:
        # templates refuse input by raising (e.g. roles out of order): vLLM answers 400 with the reason
        raise ChatError(_reason(exc)) from None


def _reason(exc: BaseException) -> str:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, jinja2.TemplateError):
            return str(current)
        current = current.__cause__ or current.__context__
    return str(exc)


def conversation(
    messages: Sequence[Mapping[str, Any]], openai_format: bool, developer_role: bool
) -> list[dict[str, Any]]:
    """The messages as the template sees them (module docstring)."""
    out = [_message(i, m, openai_format) for i, m in enumerate(messages)]
    _parse_tool_arguments(out)
    if any(m["role"] == "developer" for m in out) and not developer_role:
        systems = [
            {**{k: v for k, v in m.items() if k != "tools"}, "role": "system"} if m["role"] == "developer" else m
            for m in out
        ]
        out = _consolidate_system(systems)
    return out


def _message(index: int, msg: Mapping[str, Any], openai_format: bool) -> dict[str, Any]:
    role = msg["role"]
    content = msg.get("content")
    # vLLM's request models: only an assistant's content may be null; OpenAI's other roles need it
    if role != "assistant" and ("content" in msg if content is None else False):
        raise ChatError(f"messages.{index}.content: a {role} message's content cannot be null", "messages")
    if role in OPENAI_ROLES - {"assistant"} and "content" not in msg:
        raise ChatError(f"messages.{index}.content: a {role} message needs content", "messages")
    parts: list[Any] = [] if content is None else [content] if isinstance(content, str) else list(content)
    if role == "system":
        parts = _without_billing_header(parts)
    if isinstance(content, str):
        parts = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]  # the plain form
    items = [item for j, part in enumerate(parts) if (item := _part(index, j, part, openai_format, role)) is not None]
    out: dict[str, Any] = {"role": role, "content": items if openai_format else "\n".join(items)}
    if role == "assistant":
        if msg.get("tool_calls") is not None:
            out["tool_calls"] = [dict(c) for c in msg["tool_calls"]]
        if msg.get("reasoning") is not None:
            out["reasoning"] = out["reasoning_content"] = msg["reasoning"]
    elif role == "tool":
        if "tool_call_id" in msg:
            out["tool_call_id"] = msg["tool_call_id"]
        if openai_format and all(isinstance(p, dict) and p.get("type") == "text" for p in items):
            out["content"] = "\n".join(p["text"] for p in items)
    if isinstance(msg.get("name"), str):
        out["name"] = msg["name"]
    if isinstance(msg.get("task"), str):
        out["task"] = msg["task"]
    if role == "developer":
        out["tools"] = msg.get("tools")
    return out


# vLLM's request models type the content parts of these roles as OpenAI's (plus its own
# media and ``thinking`` parts); a message of any other role takes any part.
OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_OPENAI_ONLY_REFUSED = frozenset({"input_text", "output_text"})  # the Responses API's, not chat's


def _part(index: int, j: int, part: Any, openai_format: bool, role: str = "user") -> Any:
    where = f"messages.{index}.content.{j}"
    if role in OPENAI_ROLES and (isinstance(part, str) or part.get("type") in _OPENAI_ONLY_REFUSED):
        what = "a bare string" if isinstance(part, str) else f"a {part.get('type')} part"
        raise ChatError(f"{where}: {what} is not a chat content part of a {role} message")
    if isinstance(part, str):
        return {"type": "text", "text": part} if openai_format else part
    kind = part.get("type")
    if kind in TEXT_PART_TYPES:
        text = part.get(TEXT_PART_TYPES[kind])
        if text is None:
            if kind == "refusal":
                return None  # vLLM skips an empty refusal
            raise ChatError(f"{where}: a {kind} part needs its '{TEXT_PART_TYPES[kind]}'", f"{where}.{kind}")
        if not isinstance(text, str):
            raise ChatError(f"{where}: '{TEXT_PART_TYPES[kind]}' must be a string", where)
        if openai_format:
            extra = {k: v for k, v in part.items() if k not in ("type", TEXT_PART_TYPES[kind])}
            return {**extra, "type": "text", "text": text}
        return text
    if kind == "tool_reference":
        return {"type": "tool_reference", "name": part.get("name")} if openai_format else part.get("name")
    if kind in MEDIA_PART_TYPES:
        raise ChatError(f"{where}: a {kind} part is multimodal input, which pdserve does not serve", f"{where}.type")
    supported = sorted({*TEXT_PART_TYPES, "tool_reference"})
    raise ChatError(
        f"Unsupported chat content part type: {kind!r}. Supported types: {', '.join(supported)}.", f"{where}.type"
    )


def _without_billing_header(parts: list[Any]) -> list[Any]:
    out = []
    for part in parts:
        text = part if isinstance(part, str) else part.get("text") if part.get("type") == "text" else None
        if not (isinstance(text, str) and text.startswith(_BILLING_HEADER)):
            out.append(part)
            continue
        rest = text.partition("\n")[2]
        if rest:
            out.append(rest if isinstance(part, str) else {**part, "text": rest})
    return out


def _parse_tool_arguments(messages: list[dict[str, Any]]) -> None:
    """Templates take tool-call arguments as objects, not the JSON strings clients send."""
    for m in messages:
        calls = m.get("tool_calls")
        if m["role"] != "assistant" or not isinstance(calls, list):
            continue
        if not calls:
            m.pop("tool_calls")
            continue
        for i, call in enumerate(calls):
            function = call.get("function")
            if call.get("type", "function") != "function" or not isinstance(function, dict):
                raise ChatError("chat completions only support assistant tool_calls of type 'function'.", "tool_calls")
            function = call["function"] = dict(function)
            calls[i] = call
            raw = function.get("arguments")
            if not raw:
                function["arguments"] = {}
                continue
            parsed: Any = raw
            if isinstance(raw, str):
                try:
                    parsed = json.loads(raw)
                except json.JSONDecodeError:
                    parsed = None
            if not isinstance(parsed, dict):
                log.warning("tool call %r: arguments are not a JSON object; using {}", function.get("name"))
                parsed = {}
            function["arguments"] = parsed


def _consolidate_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All system messages merged into one, first (vLLM's ``_consolidate_system_messages``)."""
    texts: list[str] = []
    rest: list[dict[str, Any]] = []
    merge = False
    for i, m in enumerate(messages):
        if m["role"] != "system":
            rest.append(m)
            continue
        merge = merge or i > 0 or bool(texts)
        content = m.get("content", "")
        if isinstance(content, list):
            texts = [p if isinstance(p, str) else p["text"] for p in content if isinstance(p, str) or "text" in p]
            content = "\n".join(texts)
        if content:
            texts.append(content)
    if not merge:
        return messages
    return [{"role": "system", "content": "\n\n".join(texts)}, *rest]


def template_kwargs(
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    documents: list[dict[str, str]] | None = None,
    reasoning_effort: str | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """vLLM's ``build_chat_params`` then ``with_defaults``: the request's kwargs, the named
    fields over them (unset ones leave them), and ``tools`` under both."""
    user = dict(chat_template_kwargs or {})
    for bad in ("chat_template", "tokenize"):
        if bad in user:
            raise ChatError(f"Found unexpected chat template kwargs from request: {{{bad!r}}}", "chat_template_kwargs")
    named: dict[str, Any] = {
        "add_generation_prompt": add_generation_prompt,
        "continue_final_message": continue_final_message,
        "documents": documents,
        "reasoning_effort": reasoning_effort,
    }
    if reasoning_effort is not None and "enable_thinking" not in user:
        named["enable_thinking"] = reasoning_effort != "none"
    merged = user | {k: v for k, v in named.items() if v not in (None, "auto")}
    return {"tools": tools} | {k: v for k, v in merged.items() if v not in (None, "auto")}


def accepted(template: str, kwargs: Mapping[str, Any], named_params: frozenset[str]) -> dict[str, Any]:
    """The kwargs a template can read (its undeclared variables) or ``apply_chat_template``
    takes by name; the others are dropped, as vLLM's ``resolve_chat_template_kwargs``."""
    return {k: v for k, v in kwargs.items() if k in named_params or k in template_variables(template)}


@lru_cache(maxsize=32)
def template_variables(template: str) -> frozenset[str]:
    return frozenset(jinja2.meta.find_undeclared_variables(_env().parse(template)))


@lru_cache(maxsize=32)
def loops_over_content(template: str) -> bool:
    """vLLM's content-format detection: does the template iterate over a message's
    ``content`` (then it takes content as a list of parts, "openai")? Unparsable: no."""
    try:
        ast = _env().parse(template)
        return next(_content_loops(ast), None) is not None
    except Exception:  # noqa: BLE001 - vLLM falls back to "string" on any failure
        log.warning("could not parse the chat template to detect its content format; using string")
        return False


def mentions_developer_role(template: str) -> bool:
    return '"developer"' in template or "'developer'" in template


def _env() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation]
    )


class _Generation(jinja2.ext.Extension):
    """Parses ``{% generation %}`` blocks (HF assistant masks) so such templates parse."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


# vLLM's AST walk (renderers/hf.py): variables assigned from ``messages``, the loop
# variables over them, then loops over ``<message>.content`` (directly, through a macro
# parameter, or a top-level loop over a variable named ``content``).


def _is_var(node: jinja2.nodes.Node, name: str) -> bool:
    return isinstance(node, jinja2.nodes.Name) and node.ctx == "load" and node.name == name


def _is_attr(node: jinja2.nodes.Node, name: str, key: str) -> bool:
    if isinstance(node, jinja2.nodes.Getitem):
        return _is_var(node.node, name) and isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == key
    if isinstance(node, jinja2.nodes.Getattr):
        return _is_var(node.node, name) and node.attr == key
    return False


def _is_access(node: jinja2.nodes.Node, name: str, key: str | None = None) -> bool:
    if isinstance(node, jinja2.nodes.Filter):
        return node.node is not None and _is_access(node.node, name, key)
    if isinstance(node, jinja2.nodes.Test):
        return _is_access(node.node, name, key)
    if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
        return _is_access(node.node, name, key)
    return _is_attr(node, name, key) if key else _is_var(node, name)


def _aliases(root: jinja2.nodes.Node, name: str) -> Iterator[str]:
    yield name
    pending = deque([name])
    while pending:
        current = pending.popleft()
        for assign in root.find_all(jinja2.nodes.Assign):
            if _is_access(assign.node, current) and isinstance(assign.target, jinja2.nodes.Name):
                yield assign.target.name
                if assign.target.name != current:
                    pending.append(assign.target.name)


def _message_vars(root: jinja2.nodes.Node) -> Iterator[str]:
    names = list(_aliases(root, "messages"))
    for loop in root.find_all(jinja2.nodes.For):
        if any(_is_access(loop.iter, n) for n in names) and isinstance(loop.target, jinja2.nodes.Name):
            yield loop.target.name


def _content_loops(root: jinja2.nodes.Node) -> Iterator[jinja2.nodes.For]:
    messages = list(_message_vars(root))
    by_loop: dict[int, set[str]] = {}
    in_macros: set[int] = set()
    for macro in root.find_all(jinja2.nodes.Macro):
        params = {a.name for a in macro.args}
        content_params: set[str] = set()
        for call in root.find_all(jinja2.nodes.Call):
            if not (isinstance(call.node, jinja2.nodes.Name) and call.node.name == macro.name):
                continue
            for i, arg in enumerate(call.args):
                if i < len(macro.args) and any(_is_access(arg, m, "content") for m in messages):
                    content_params.add(macro.args[i].name)
            for kw in call.kwargs:
                if kw.key in params and any(_is_access(kw.value, m, "content") for m in messages):
                    content_params.add(kw.key)
        for loop in macro.find_all(jinja2.nodes.For):
            in_macros.add(id(loop))
            if content_params:
                by_loop[id(loop)] = content_params
    for loop in root.find_all(jinja2.nodes.For):
        if any(_is_access(loop.iter, m, "content") for m in messages):
            yield loop
        elif isinstance(loop.iter, jinja2.nodes.Name) and loop.iter.name in by_loop.get(id(loop), ()):
            yield loop
        elif id(loop) not in in_macros and isinstance(loop.iter, jinja2.nodes.Name) and loop.iter.name == "content":
            yield loop
