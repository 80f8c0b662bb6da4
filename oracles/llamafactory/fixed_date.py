"""The date LLaMA-Factory's Llama 3 tool prompt states ("Today Date: ..."): its clock's, unless pinned. The oracles
that record replies (run_chat_model.py, run_api_server.py) pin it, and write it into their fixture as
`tool_prompt_date`, so the tests can pin chatplex's to the same and a reply recorded one day still compares the next.
"""

from __future__ import annotations

from datetime import datetime

# The day chat_model_replies.json and api_replies.json were recorded (then with the real clock, 2026-12-06 UTC).
ORACLE_DATE = datetime(2026, 12, 6)


class _FixedDatetime(datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: ANN001, ANN206 - datetime.now's own signature
        return ORACLE_DATE


def pin_llamafactory_date() -> str:
    """Make LLaMA-Factory's tool prompts state ORACLE_DATE; returns it as they write it."""
    from llamafactory.data import tool_utils

    tool_utils.datetime = _FixedDatetime
    return ORACLE_DATE.strftime("%d %b %Y")
