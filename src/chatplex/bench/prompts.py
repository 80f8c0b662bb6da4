"""Benchmark prompts: random ones of set lengths (seeded), or given ones from a JSONL file.

Random prompts are built from the server's tokenizer when one is given, so their token length is exact; without
one, from a word list of common short English words (about one token each in most vocabularies).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatplex.errors import ConfigError

# Short, common words: most BPE vocabularies hold each as one token (with its leading space).
WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "for",
    "on",
    "was",
    "with",
    "as",
    "at",
    "by",
    "be",
    "this",
    "from",
    "or",
    "have",
    "an",
    "are",
    "not",
    "but",
    "had",
    "his",
    "they",
    "you",
    "one",
    "all",
    "were",
    "her",
    "there",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
)


@dataclass(frozen=True)
class BenchPrompt:
    """One request's input: a prompt string or chat messages, with its output length.

    `prompt_tokens` is the client's own count of the prompt (None when unknown); servers report the exact
    count, template included, in their usage.
    """

    output_len: int
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt_tokens: int | None = None

    def chat_messages(self) -> list[dict[str, Any]]:
        return self.messages if self.messages is not None else [{"role": "user", "content": self.prompt}]


def sample_lengths(rng: random.Random, n: int, length: int, range_ratio: float) -> list[int]:
    """n lengths drawn uniformly from [length*(1-r), length*(1+r)], each at least 1."""
    lo = max(1, math.floor(length * (1 - range_ratio)))
    hi = max(lo, math.ceil(length * (1 + range_ratio)))
    return [rng.randint(lo, hi) for _ in range(n)]


def _check_lengths(num_prompts: int, input_len: int, output_len: int, range_ratio: float) -> None:
    for name, value in (("num_prompts", num_prompts), ("input_len", input_len), ("output_len", output_len)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}.", param=name)
    if not 0.0 <= range_ratio < 1.0:
        raise ConfigError(f"range_ratio must be in [0, 1), got {range_ratio!r}.", param="range_ratio")


def random_prompts(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    seed: int = 0,
    tokenizer: Any = None,
) -> list[BenchPrompt]:
    """Seeded random prompts; with a tokenizer each prompt encodes to exactly its drawn length when possible."""
    _check_lengths(num_prompts, input_len, output_len, range_ratio)
    rng = random.Random(seed)
    in_lens = sample_lengths(rng, num_prompts, input_len, range_ratio)
    out_lens = sample_lengths(rng, num_prompts, output_len, range_ratio)
    prompts = []
    for n_in, n_out in zip(in_lens, out_lens):
        if tokenizer is None:
            text = " ".join(rng.choice(WORDS) for _ in range(n_in))
            prompts.append(BenchPrompt(output_len=n_out, prompt=text, prompt_tokens=n_in))
        else:
            text, count = _token_prompt(tokenizer, rng, n_in)
            prompts.append(BenchPrompt(output_len=n_out, prompt=text, prompt_tokens=count))
    return prompts


def _token_prompt(tokenizer: Any, rng: random.Random, length: int) -> tuple[str, int]:
    """Random non-special tokens decoded to text; re-encoding may merge or split tokens, so adjust a few times."""
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    ids = [rng.choice(vocab) for _ in range(length)]
    for _ in range(8):
        text = tokenizer.decode(ids)
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == length:
            return text, length
        ids = ids[:length] if len(ids) > length else ids + [rng.choice(vocab) for _ in range(length - len(ids))]
    text = tokenizer.decode(ids)
    return text, len(tokenizer.encode(text, add_special_tokens=False))


def load_tokenizer(path: str) -> Any:
    """A Hugging Face tokenizer from a local directory (the server model's)."""
    if not Path(path).is_dir():
        raise ConfigError(f"tokenizer: {path!r} is not a directory.", param="tokenizer")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_jsonl(path: str, output_len: int, num_prompts: int | None = None) -> list[BenchPrompt]:
    """Prompts from a JSONL file: one object a line with `prompt` (string) or `messages` (chat list), and an
    optional `output_len` (or `max_tokens`) that overrides `output_len`. With `num_prompts` larger than the file,
    the file repeats."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts_file: {path!r} does not exist.", param="prompts_file")
    prompts = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            prompts.append(_parse_line(line, f"{path}:{lineno}", output_len))
    if not prompts:
        raise ConfigError(f"prompts_file: {path!r} holds no prompts.", param="prompts_file")
    if num_prompts is None:
        return prompts
    if num_prompts < 1:
        raise ConfigError(f"num_prompts must be >= 1, got {num_prompts}.", param="num_prompts")
    return [prompts[i % len(prompts)] for i in range(num_prompts)]


def _parse_line(line: str, where: str, output_len: int) -> BenchPrompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg}).", param="prompts_file") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object with 'prompt' or 'messages'.", param="prompts_file")
    n_out = obj.get("output_len", obj.get("max_tokens", output_len))
    if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out < 1:
        raise ConfigError(f"{where}: output_len must be an integer >= 1, got {n_out!r}.", param="output_len")
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if (prompt is None) == (messages is None):
        raise ConfigError(f"{where}: give exactly one of 'prompt' and 'messages'.", param="prompts_file")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError(f"{where}: 'prompt' must be a string.", param="prompt")
    if messages is not None and not (
        isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)
    ):
        raise ConfigError(f"{where}: 'messages' must be a non-empty list of message objects.", param="messages")
    return BenchPrompt(output_len=n_out, prompt=prompt, messages=messages)
