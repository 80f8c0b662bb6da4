"""The responses a server keeps for `previous_response_id`, GET and DELETE: in memory, least recently used out.

Each entry holds the Response as returned and the conversation that produced it (as chat messages, without its
`instructions`, which OpenAI does not carry over to the next turn) followed by its own output. A server keeps at
most `MAX_STORED_RESPONSES`; past that the least recently used is dropped and asking for it is a 404, as for an
id that never existed. Nothing is written to disk: a restart forgets them all.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from chatplex.errors import NotFoundError
from chatplex.server.responses.schemas import ResponseObject
from chatplex.types import Message

MAX_STORED_RESPONSES = 1000


@dataclass(frozen=True)
class StoredResponse:
    response: ResponseObject
    messages: list[Message]  # the whole conversation up to and including this response's output


class ResponseStore:
    """A bounded LRU map from response id to `StoredResponse`."""

    def __init__(self, limit: int = MAX_STORED_RESPONSES) -> None:
        if limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")
        self.limit = limit
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, stored: StoredResponse) -> None:
        self._items[stored.response.id] = stored
        self._items.move_to_end(stored.response.id)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, response_id: str, param: str | None = None) -> StoredResponse:
        """The stored response (now the most recently used); NotFoundError naming `param` when it is not kept."""
        stored = self._items.get(response_id)
        if stored is None:
            raise NotFoundError(
                f"Response with id {response_id!r} not found (never stored, stored with store=false, deleted, "
                f"or past the last {self.limit} this server keeps).",
                param=param,
                code="response_not_found",
            )
        self._items.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> None:
        self.get(response_id)
        del self._items[response_id]
