"""Split a thinking model's `<think>...</think>` from its answer, whole or streamed.

Qwen3, GLM-4.5+ and QwQ open the block themselves (`<think>` is the first thing they write). DeepSeek-R1 (and
V3.1 in thinking mode) get `<think>` from the template, at the end of the prompt, so their output starts inside
the block: `ReasoningParser.for_prompt(prompt)` sees that and starts in reasoning. Output that never opens a block
is all answer; a block that never closes (the reply was cut short) is all reasoning.

Whitespace right after `<think>` and right after `</think>` is layout, not text, and is dropped.
The engine runs this before the tool parser: tool calls are parsed from the answer only.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatplex.errors import ConfigError


@dataclass(frozen=True)
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


class ReasoningParser:
    """One parser per reply. `feed`/`finish` stream `ReasoningDelta`s; `parse` splits a whole reply."""

    def __init__(self, start: str = "<think>", end: str = "</think>", *, starts_inside: bool = False) -> None:
        self.start, self.end, self.starts_inside = start, end, starts_inside
        # states: "opening" (may still open a block), "thinking", "answer"
        self._state = "thinking" if starts_inside else "opening"
        self._strip = starts_inside  # drop whitespace before the next real char
        self._buffer = ""

    @classmethod
    def for_prompt(cls, prompt: str, start: str = "<think>", end: str = "</think>") -> ReasoningParser:
        """A parser for a reply to `prompt`: inside the block already if the prompt left one open."""
        tail = prompt.rstrip()
        return cls(start, end, starts_inside=tail.endswith(start))

    def feed(self, delta_text: str) -> ReasoningDelta:
        self._buffer += delta_text
        return self._drain(final=False)

    def finish(self) -> ReasoningDelta:
        return self._drain(final=True)

    def parse(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, content) of a whole reply; either is None when empty."""
        parser = ReasoningParser(self.start, self.end, starts_inside=self.starts_inside)
        a, b = parser.feed(text), parser.finish()
        return (a.reasoning + b.reasoning) or None, (a.content + b.content) or None

    def _drain(self, final: bool) -> ReasoningDelta:
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            if self._strip:
                self._buffer = self._buffer.lstrip()
                if not self._buffer and not final:
                    break
                self._strip = False
            if self._state == "opening":
                lead = self._buffer.lstrip()
                if lead.startswith(self.start):
                    self._buffer = lead[len(self.start) :]
                    self._state, self._strip = "thinking", True
                    continue
                if not final and (not lead or self.start.startswith(lead)):
                    break  # could still be `<think>`
                self._state = "answer"
            if self._state == "answer":
                content.append(self._buffer)
                self._buffer = ""
                break
            # thinking
            at = self._buffer.find(self.end)
            if at >= 0:
                reasoning.append(self._buffer[:at])
                self._buffer = self._buffer[at + len(self.end) :]
                self._state, self._strip = "answer", True
                continue
            keep = 0 if final else _partial_suffix(self._buffer, self.end)
            reasoning.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            break
        return ReasoningDelta("".join(reasoning), "".join(content))


REASONING_PARSERS = {"think": ("<think>", "</think>")}


def get_reasoning_parser(name: str, prompt: str = "") -> ReasoningParser:
    """A fresh parser for one reply to `prompt` (its end decides whether the reply starts inside thinking)."""
    if name not in REASONING_PARSERS:
        valid = ", ".join(sorted(REASONING_PARSERS))
        raise ConfigError(f"reasoning_parser: {name!r} is unknown; choose one of {valid}.", param="reasoning_parser")
    start, end = REASONING_PARSERS[name]
    return ReasoningParser.for_prompt(prompt, start, end)
