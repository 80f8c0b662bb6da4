"""One LLaMA-Factory chat format and how it turns a conversation into token ids.

LLaMA-Factory builds prompts from slots, not Jinja: each turn is a list of pieces (text with `{{content}}`
filled in, a named token, the tokenizer's BOS or EOS), and each text piece is tokenized on its own. A fine-tune
saw exactly those ids, which can differ from tokenizing the joined text (a SentencePiece tokenizer adds a word
boundary at the start of every piece), so chatplex encodes piece by piece too, and also offers the joined text
for display. Conversations here are in LLaMA-Factory's form: alternating user/observation and
assistant/function turns (`conversation.py` makes them from OpenAI-style messages).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.templates.llamafactory.tool_formats import Call, ToolFormat

Slot = str | dict[str, str]  # text, {"token": NAME}, or {"special": "bos_token" | "eos_token"}

# Joins the pieces of a prompt rendered as text for a multimodal family: the family expands media placeholders in
# the text (they never cross pieces), then each piece is encoded on its own, as LLaMA-Factory encodes them.
PIECE_SEPARATOR = "\x1e"
Turn = dict[str, str]  # {"role": user|assistant|observation|function, "content": ...}


@dataclass(frozen=True)
class MediaTokens:
    """The multimodal plugin LLaMA-Factory pairs with the format, and its tokens (image_token, vision_bos_token...)."""

    plugin: str = "BasePlugin"
    tokens: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LFFormat:
    name: str
    # how turns combine: "plain", "system_in_first_user" (Llama 2: the system text opens the first user turn),
    # "reasoning" (thought words around a reply), "reasoning_close_only" (GLM-4.7: an empty thought is only the
    # closing word), "bare_tools" (MOSS-VL: tools without a system text lose their leading newlines)
    encoding: str
    prefix: tuple[Slot, ...]
    system: tuple[Slot, ...]
    user: tuple[Slot, ...]
    assistant: tuple[Slot, ...]
    observation: tuple[Slot, ...]
    function: tuple[Slot, ...]
    tool_format: str  # the name of the tool format that writes the assistant's tool calls
    calls: ToolFormat  # writes the assistant's tool calls
    tools: ToolFormat | tuple[Slot, ...]  # describes the tools (a tool format, or slots around the tools' JSON)
    default_system: str
    stop_words: tuple[str, ...]
    thought_words: tuple[str, str]
    tool_call_words: tuple[str, str]
    efficient_eos: bool
    replace_eos: bool
    enable_thinking: bool | None
    preserve_thinking: bool
    media: MediaTokens = field(default_factory=MediaTokens)

    @property
    def reasoning(self) -> bool:
        return self.encoding.startswith("reasoning")

    def configured(
        self,
        *,
        tool_format: str | None = None,
        default_system: str | None = None,
        enable_thinking: bool | None = True,
        preserve_thinking: bool = False,
        formats: dict[str, ToolFormat] | None = None,
    ) -> LFFormat:
        """The format as LLaMA-Factory's data arguments change it (`tool_format`, `default_system`, and the
        thinking switches, which only reasoning formats read)."""
        changed = self
        if tool_format is not None:
            if formats is None or tool_format not in formats:
                raise KeyError(tool_format)
            # LLaMA-Factory rebuilds the function slots from the plain reply slots when the tool format changes.
            slots: tuple[Slot, ...] = (
                ("{{content}}",) if self.efficient_eos else ("{{content}}", {"special": "eos_token"})
            )
            changed = replace(
                changed, function=slots, tool_format=tool_format, calls=formats[tool_format], tools=formats[tool_format]
            )
        if default_system is not None:
            changed = replace(changed, default_system=default_system)
        if self.reasoning:
            changed = replace(changed, enable_thinking=enable_thinking, preserve_thinking=preserve_thinking)
        return changed

    # -- slots -> pieces -----------------------------------------------------------------------------------------

    @staticmethod
    def _fill(slots: tuple[Slot, ...], **values: str) -> list[Slot]:
        out: list[Slot] = []
        for slot in slots:
            if isinstance(slot, str):
                for name, value in values.items():  # in this order, once each, as LLaMA-Factory fills them
                    slot = slot.replace("{{" + name + "}}", value, 1)
            out.append(slot)
        return out

    def _describe_tools(self, tools: list[dict[str, Any]]) -> str:
        if isinstance(self.tools, ToolFormat):
            return self.tools.describe(tools) if tools else ""
        first = self._fill(self.tools, content=json.dumps(tools, ensure_ascii=False))[0]
        return first if isinstance(first, str) else ""

    def _calls_text(self, content: str) -> str:
        """An assistant's tool-call turn (JSON `[{"name", "arguments"}]`, maybe with thought or call words
        around it) written in the format's call syntax."""
        if self.encoding == "system_in_first_user":  # LLaMA-Factory's Llama 2 rule passes no call or thought words
            return self.calls.write_calls(_parse_calls(content))
        start, end = self.tool_call_words
        match = re.search(rf"{re.escape(start)}(.*?){re.escape(end)}", content, re.DOTALL) if start and end else None
        if match is not None:
            return content.replace(match.group(0), "") + self.calls.write_calls(_parse_calls(match.group(1)))
        t_start, t_end = self.thought_words
        thought = re.search(rf"{re.escape(t_start)}(.*?){re.escape(t_end)}", content, re.DOTALL)
        calls_json = content.replace(thought.group(0), "") if thought else content
        text = self.calls.write_calls(_parse_calls(calls_json))
        return thought.group(0) + text if thought else text

    def _turn_pieces(self, index: int, turn: Turn, system: str, tools: list[dict[str, Any]] | None) -> list[Slot]:
        pieces: list[Slot] = []
        system_text = ""
        if index == 0:
            pieces += self.prefix
            if system or tools:
                tool_text = self._describe_tools(tools) if tools else ""
                if self.encoding == "bare_tools" and tools and not system:
                    tool_text = tool_text.lstrip("\n")
                if self.encoding == "system_in_first_user":
                    first = self._fill(self.system, content=system + tool_text)[0]
                    system_text = first if isinstance(first, str) else ""
                else:
                    pieces += self._fill(self.system, content=system + tool_text)
        role, content = turn["role"], turn["content"]
        if role == "user":
            if self.encoding == "system_in_first_user":
                return pieces + self._fill(self.user, content=system_text + content)
            return pieces + self._fill(self.user, content=content, idx=str(index // 2))
        if role == "assistant":
            return pieces + self._fill(self.assistant, content=content)
        if role == "observation":
            return pieces + self._fill(self.observation, content=content)
        if role == "function":
            return pieces + self._fill(self.function, content=self._calls_text(content))
        raise InvalidRequestError(
            f"messages[{index}]: unexpected role {role!r} for the {self.name} format.", param=f"messages[{index}].role"
        )

    # -- pieces -> ids / text ------------------------------------------------------------------------------------

    @staticmethod
    def piece_ids(tokenizer: Any, pieces: list[Slot]) -> list[int]:
        ids: list[int] = []
        for piece in pieces:
            if isinstance(piece, str):
                if piece:
                    ids += tokenizer.encode(piece, add_special_tokens=False)
            elif "token" in piece:
                ids.append(tokenizer.convert_tokens_to_ids(piece["token"]))
            elif piece.get("special") == "bos_token" and tokenizer.bos_token_id is not None:
                ids.append(tokenizer.bos_token_id)
            elif piece.get("special") == "eos_token" and tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
            # any other special name yields nothing, as in LLaMA-Factory
        return ids

    @staticmethod
    def piece_text(tokenizer: Any, pieces: list[Slot], separator: str = "") -> str:
        """The pieces as text (named and special tokens as their text), joined by `separator` (see
        `PIECE_SEPARATOR`)."""
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
            elif "token" in piece:
                out.append(piece["token"])
            elif piece.get("special") == "bos_token" and tokenizer.bos_token_id is not None:
                out.append(tokenizer.bos_token)
            elif piece.get("special") == "eos_token" and tokenizer.eos_token_id is not None:
                out.append(tokenizer.eos_token)
        return separator.join(p for p in out if p)

    def _pieces(self, turns: list[Turn], system: str | None, tools: list[dict[str, Any]] | None) -> list[list[Slot]]:
        system = system or self.default_system
        return [self._turn_pieces(i, turn, system, tools) for i, turn in enumerate(turns)]

    # -- thought handling (reasoning formats) --------------------------------------------------------------------

    def empty_thought(self) -> str:
        if self.encoding == "reasoning_close_only":
            return self.thought_words[1]
        return self.thought_words[0] + self.thought_words[1]

    def remove_thought(self, content: str) -> str:
        start, end = self.thought_words
        return re.sub(rf"{re.escape(start)}(.*?){re.escape(end)}", "", content, flags=re.DOTALL).lstrip("\n")

    def _has_thought(self, content: str) -> bool:
        return self.thought_words[0].strip() in content or self.thought_words[1].strip() in content

    # -- LLaMA-Factory's two encodings ---------------------------------------------------------------------------

    def encode_oneturn(
        self,
        tokenizer: Any,
        turns: list[Turn],
        system: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        *,
        enable_thinking: bool | None = None,
        text: bool = False,
        separator: str = "",
    ) -> tuple[Any, Any]:
        """(prompt, response) for a conversation ending in the reply: ids, or the text when `text` (its pieces
        joined by `separator`)."""
        thinking = self.enable_thinking if enable_thinking is None else enable_thinking
        turns = [dict(t) for t in turns]
        if self.reasoning:
            if not self.preserve_thinking:
                for i in range(1, len(turns) - 2, 2):
                    turns[i]["content"] = self.remove_thought(turns[i]["content"])
            if thinking is False:
                turns[-1]["content"] = self.remove_thought(turns[-1]["content"])
        pieces = self._pieces(turns, system, tools)
        if self.reasoning and not self._has_thought(turns[-1]["content"]):
            # the empty thought, a piece of its own: after the prompt (not learnt) or before the reply (learnt)
            if not thinking:
                pieces[-2:-1] = [pieces[-2] + [self.empty_thought()]] if len(pieces) > 1 else [[self.empty_thought()]]
            else:
                pieces[-1] = [self.empty_thought(), *pieces[-1]]
        if text:
            return (
                self.piece_text(tokenizer, [p for turn in pieces[:-1] for p in turn], separator),
                self.piece_text(tokenizer, pieces[-1], separator),
            )
        prompt = self.piece_ids(tokenizer, [p for turn in pieces[:-1] for p in turn])
        response = self.piece_ids(tokenizer, pieces[-1])
        return prompt, response

    def encode_multiturn(
        self, tokenizer: Any, turns: list[Turn], system: str | None = None, tools: list[dict[str, Any]] | None = None
    ) -> list[tuple[list[int], list[int]]]:
        """(prompt, response) ids per exchange, as LLaMA-Factory's training data sees them."""
        turns = [dict(t) for t in turns]
        if self.reasoning and self.enable_thinking is False:
            for i in range(1, len(turns), 2):
                turns[i]["content"] = self.remove_thought(turns[i]["content"])
        encoded = [self.piece_ids(tokenizer, p) for p in self._pieces(turns, system, tools)]
        if self.reasoning:
            thought = tokenizer.encode(self.empty_thought(), add_special_tokens=False)
            for i in range(0, len(turns), 2):
                if not self._has_thought(turns[i + 1]["content"]):
                    if not self.enable_thinking:
                        encoded[i] = encoded[i] + thought
                    else:
                        encoded[i + 1] = thought + encoded[i + 1]
        return [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]

    # -- what the engines call -----------------------------------------------------------------------------------

    def prompt_ids(
        self,
        tokenizer: Any,
        turns: list[Turn],
        system: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        *,
        enable_thinking: bool | None = None,
    ) -> list[int]:
        """The ids a reply is generated from: LLaMA-Factory's ChatModel pairs the turns with an empty reply."""
        ids, _ = self.encode_oneturn(
            tokenizer, [*turns, {"role": "assistant", "content": ""}], system, tools, enable_thinking=enable_thinking
        )
        return list(ids)

    def prompt_text(
        self,
        tokenizer: Any,
        turns: list[Turn],
        system: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        *,
        enable_thinking: bool | None = None,
        separator: str = "",
    ) -> str:
        text, _ = self.encode_oneturn(
            tokenizer,
            [*turns, {"role": "assistant", "content": ""}],
            system,
            tools,
            enable_thinking=enable_thinking,
            text=True,
            separator=separator,
        )
        return str(text)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """The ids that end a reply: the (fixed) tokenizer's EOS and the stop words."""
        return sorted({tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(w) for w in self.stop_words)})

    def fix_tokenizer(self, tokenizer: Any) -> list[str]:
        """Set the tokenizer's EOS and stop words as LLaMA-Factory does before it encodes (its stop words become
        special tokens, so text in a turn never splits them), and return the tokens it had to add."""
        stop_words = list(self.stop_words)
        added: list[str] = []

        def set_eos(token: str) -> None:
            if tokenizer.eos_token != token and tokenizer.add_special_tokens({"eos_token": token}):
                added.append(token)

        if self.replace_eos and stop_words:
            set_eos(stop_words.pop(0))
        if tokenizer.eos_token_id is None:
            set_eos("<|endoftext|>")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if stop_words:
            before = len(tokenizer)
            tokenizer.add_tokens(stop_words, special_tokens=True)
            added += [w for w in stop_words if tokenizer.convert_tokens_to_ids(w) >= before]
        return added


def _parse_calls(text: str) -> list[Call]:
    try:
        calls = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequestError(
            f"messages: a function turn must be JSON tool calls, got {text[:80]!r}.", param="messages"
        ) from None
    calls = calls if isinstance(calls, list) else [calls]
    return [(c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in calls]
