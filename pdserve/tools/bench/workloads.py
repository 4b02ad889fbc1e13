"""Benchmark workloads: what to send and when, as text prompts any OpenAI server takes.

Every workload is a list of ``Item`` (prompt, max_tokens, arrival offset or None
for "as fast as the arrival process says"). Text is built from a fixed word list,
one word ≈ one token for the default model's tokenizer, so sizes are stated in
approximate tokens; what the server counted is in each result's usage.

- ``shared-prefix``: llm-d's capacity-benchmark shape — G groups of Q prompts;
  each group shares a long system prompt, each prompt adds a short question;
  requests of all groups are interleaved at random.
- ``multi-turn``: C conversations of T turns; turn t resends the whole history
  (earlier questions and fixed stand-in answers), so it extends turn t-1's prefix.
- ``random``: independent prompts, lengths uniform in a range; no shared prefix.
- ``trace``: a Mooncake-format JSONL trace (``timestamp`` ms, ``input_length``,
  ``output_length``, ``hash_ids`` of 512-token blocks): each hash id becomes a
  fixed block of words (same id → same words), lengths divided by ``scale``.
- ``conversations``: the same trace's busiest conversations (its reuse in few rows);
  ``at_rate`` stretches any timed workload to a mean request rate.

``trace_token_ids`` is the trace in token space, for models served without a
tokenizer (``pdserve bench load --trace``): each hash id becomes a fixed block of
random token ids, so the trace's prefix sharing survives without any text.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Common English words, each one token (with its leading space) for Llama/SmolLM-style BPE.
_WORDS = (
    "the of and to in is was for on are with as his they be at one have this from or had by word but what "
    "some we can out other were all there when up use your how said an each she which do their time if will "
    "way about many then them write would like so these her long make thing see him two has look more day "
    "could go come did number sound no most people my over know water than call first who may down side been "
    "now find any new work part take get place made live where after back little only round man year came "
    "show every good me give our under name very through just form sentence great think say help low line "
    "differ turn cause much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high such follow act why "
    "ask men change went light kind off need house picture try us again animal point mother world near build "
    "self earth father head stand own page should country found answer school grow study still learn plant "
    "cover food sun four between state keep eye never last let thought city tree cross farm hard start might "
    "story saw far sea draw left late run while press close night real life few north open seem together next "
    "white children begin got walk example ease paper group always music those both mark often letter until "
    "mile river car feet care second book carry took science eat room friend began idea fish mountain stop "
    "once base hear horse cut sure watch color face wood main enough plain girl usual young ready above ever "
    "red list though feel talk bird soon body dog family direct pose leave song measure door product black "
    "short numeral class wind question happen complete ship area half rock order fire south problem piece "
    "told knew pass since top whole king space heard best hour better true during hundred five remember step "
    "early hold west ground interest reach fast verb sing listen six table travel less morning ten simple"
).split()


@dataclass(frozen=True)
class Item:
    prompt: str
    max_tokens: int
    at_s: float | None = None  # arrival offset from the start (traces); None: the arrival process decides
    group: str = ""  # what the prompt shares a prefix with ("" = nothing)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, n)))


def shared_prefix(
    rng: random.Random, groups: int, per_group: int, prefix_tokens: int, question_tokens: int, max_tokens: int
) -> list[Item]:
    tag = rng.getrandbits(32)  # fresh prefixes every run: no cache left over from an earlier one
    systems = [f"System {tag:x}-{g}: " + words(rng, prefix_tokens) for g in range(groups)]
    items = [
        Item(f"{systems[g]}\nQuestion {q}: {words(rng, question_tokens)}?", max_tokens, group=f"g{g}")
        for g in range(groups)
        for q in range(per_group)
    ]
    rng.shuffle(items)
    return items


def multi_turn(
    rng: random.Random, conversations: int, turns: int, turn_tokens: int, answer_tokens: int, max_tokens: int
) -> list[Item]:
    tag = rng.getrandbits(32)
    histories = [f"Conversation {tag:x}-{c}." for c in range(conversations)]
    items: list[Item] = []
    for _ in range(turns):  # all first turns, then all second turns, ...: each extends its earlier prompt
        for c in range(conversations):
            histories[c] += f"\nUser: {words(rng, turn_tokens)}\nAssistant:"
            items.append(Item(histories[c], max_tokens, group=f"c{c}"))
            histories[c] += " " + words(rng, answer_tokens)
    return items


def random_lengths(rng: random.Random, n: int, prompt: tuple[int, int], output: tuple[int, int]) -> list[Item]:
    tag = rng.getrandbits(32)
    return [Item(f"Request {tag:x}-{i}: " + words(rng, rng.randint(*prompt)), rng.randint(*output)) for i in range(n)]


def trace(path: Path, limit: int, scale: float, time_scale: float, max_output: int) -> list[Item]:
    """Mooncake trace → items; block ``k`` of a hash id is 512/scale words, seeded by the id."""
    rows: list[dict[str, Any]] = []
    with path.open() as f:
        for line in f:
            if len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return _items_of(rows, scale, time_scale, max_output)


def _items_of(rows: Sequence[dict[str, Any]], scale: float, time_scale: float, max_output: int) -> list[Item]:
    """Trace rows → items, arrivals from the first row's, ``time_scale`` times faster."""
    block_words = max(1, round(512 / scale))
    blocks: dict[int, str] = {}

    def block(hid: int) -> str:
        if hid not in blocks:
            blocks[hid] = words(random.Random(hid), block_words)
        return blocks[hid]

    items: list[Item] = []
    for row in rows:
        n_words = max(1, round(int(row["input_length"]) / scale))
        text = " ".join(block(int(h)) for h in row["hash_ids"]).split(" ")[:n_words]
        first = int(row["hash_ids"][0]) if row["hash_ids"] else -1
        out = max(1, min(max_output, round(int(row["output_length"]) / scale)))
        items.append(Item(" ".join(text), out, at_s=float(row["timestamp"]) / 1000 / time_scale, group=str(first)))
    if items:
        start = min(i.at_s or 0.0 for i in items)
        items = [Item(i.prompt, i.max_tokens, (i.at_s or 0.0) - start, i.group) for i in items]
    return items


def conversations(path: Path, limit: int, scale: float, max_output: int) -> list[Item]:
    """The trace's busiest conversations, whole and in trace order, up to ``limit`` requests.

    A window of consecutive rows of the Mooncake conversation trace reuses little (5-9 % of
    blocks in 300 rows: a conversation's turns are minutes apart); its busiest conversations
    keep the trace's reuse (turn t extends turn t-1) in a few hundred rows. A conversation is
    the requests sharing the first two hash ids (the first is one prompt all rows share).
    """
    rows = [json.loads(line) for line in path.open()]
    sizes = Counter(tuple(r["hash_ids"][:2]) for r in rows if len(r["hash_ids"]) > 1)
    keep: set[tuple[int, ...]] = set()
    total = 0
    for key, n in sizes.most_common():
        if total + n > limit and keep:
            break
        keep.add(key)
        total += n
    picked = [r for r in rows if tuple(r["hash_ids"][:2]) in keep][:limit]
    return _items_of(picked, scale, 1.0, max_output)


def at_rate(items: Sequence[Item], rate: float) -> list[Item]:
    """The items' own arrival pattern (``at_s``), stretched or squeezed to ``rate`` req/s on average."""
    span = max((i.at_s or 0.0) for i in items) if items else 0.0
    factor = (len(items) - 1) / (rate * span) if span > 0 and rate > 0 else 1.0
    return [Item(i.prompt, i.max_tokens, (i.at_s or 0.0) * factor, i.group) for i in items]


def trace_token_ids(
    path: Path, limit: int, scale: float, vocab: int, salt: str, max_prompt: int, max_output: int
) -> list[tuple[list[int], int]]:
    """The first ``limit`` rows of a Mooncake trace as (prompt token ids, max_tokens).

    Block ``k`` of a hash id is 512/``scale`` token ids seeded by (``salt``, id): equal ids
    in one call give equal blocks (the trace's prefix sharing), another ``salt`` gives
    fresh ones (no cache hits between runs). Prompts are cut to ``input_length``/``scale``
    and to ``max_prompt``; outputs are the row's ``output_length`` cut to ``max_output``.
    Timestamps are dropped: the caller's arrival process decides when to send.
    """
    block_len = max(1, round(512 / scale))
    blocks: dict[int, list[int]] = {}

    def block(hid: int) -> list[int]:
        if hid not in blocks:
            rng = random.Random(f"{salt}/{hid}")
            blocks[hid] = [rng.randrange(100, vocab) for _ in range(block_len)]
        return blocks[hid]

    out: list[tuple[list[int], int]] = []
    with path.open() as f:
        for line in f:
            if len(out) >= limit:
                break
            row: dict[str, Any] = json.loads(line)
            n = min(max_prompt, max(1, round(int(row["input_length"]) / scale)))
            prompt = [t for h in row["hash_ids"] for t in block(int(h))][:n]
            out.append((prompt, max(1, min(max_output, int(row["output_length"])))))
    return out


WORKLOADS: dict[str, Callable[..., list[Item]]] = {
    "shared-prefix": shared_prefix,
    "multi-turn": multi_turn,
    "random": random_lengths,
    "trace": trace,
}
