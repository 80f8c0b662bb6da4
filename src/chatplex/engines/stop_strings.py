"""Stop strings on streamed text: cut exactly before the first stop string, even when it spans tokens.

Text that could be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Return (text safe to emit, the stop string matched or None). After a match, stop feeding."""
        if not self._stops:
            return text, None
        buf = self._held + text
        hits = [(buf.find(s), s) for s in self._stops if s in buf]
        if hits:
            pos, stop = min(hits)
            self._held = ""
            return buf[:pos], stop
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], None

    def flush(self) -> str:
        """The held-back text, when the sequence ends for another reason."""
        held, self._held = self._held, ""
        return held
