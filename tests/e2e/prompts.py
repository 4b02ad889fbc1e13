"""Prompts for output-equality tests: chat and completion, about 10 to 1500 tokens."""

from __future__ import annotations

from dataclasses import dataclass

_STORY = (
    "The river town of Alder Bend sat where two valleys met. Every spring the snowmelt raised the water "
    "until the old stone bridge hummed under the current, and the ferry keeper, a patient woman named Ilse, "
    "counted the days by the marks the flood left on her boathouse wall. Traders came from the north with wool "
    "and from the south with salt, and the market square filled with voices arguing over prices in three "
    "languages. Children ran between the stalls, and the baker sold bread shaped like fish for the festival of "
    "the first crossing. In 1843 a surveyor arrived with brass instruments and a plan for a railway; the town "
    "council debated it for eleven nights before voting, seven to five, to let the line pass along the eastern "
    "bank. "
)


@dataclass(frozen=True)
class Case:
    name: str
    chat: bool
    text: str


def _story(words: int) -> str:
    base = _STORY.split()
    out = [base[i % len(base)] for i in range(words)]
    return " ".join(out)


CASES = [
    Case("completion-10", False, "In one short sentence, the capital city of France is"),
    Case("chat-short", True, "Name three colours of the rainbow."),
    Case("completion-150", False, _story(110) + "\nIn one sentence, the town's main trade was"),
    Case("chat-500", True, _story(380) + "\n\nSummarise the story above in two sentences."),
    Case("completion-1000", False, _story(760) + "\nThe vote on the railway ended"),
    Case("chat-1500", True, _story(1200) + "\n\nWho kept the ferry, and what did she count?"),
]

MAX_TOKENS = 24


def prompt_ids(tokenizer, case: Case) -> list[int]:  # type: ignore[no-untyped-def]
    if case.chat:
        return tokenizer.encode_chat([{"role": "user", "content": case.text}])
    return tokenizer.encode(case.text)
