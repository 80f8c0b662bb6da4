"""Generation keyword arguments (LLaMA-Factory and OpenAI names) -> validated `SamplingParams`.

Every engine gets the same validation, so a bad value gets the same error whichever engine runs.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from chatplex.errors import InvalidRequestError
from chatplex.types import SamplingParams

MAX_LOGPROBS = 20
MAX_N = 64
MAX_STOP_STRINGS = 16
# Integers reach torch and the engines as 64-bit values: anything wider is refused here, not overflowed there.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Alias -> canonical name. OpenAI's names on the left where they differ from LLaMA-Factory's.
ALIASES = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens", "n": "num_return_sequences"}
KNOWN = frozenset(
    [
        "do_sample",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "max_new_tokens",
        "max_length",
        "min_new_tokens",
        "num_return_sequences",
        "stop",
        "stop_token_ids",
        "seed",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "ignore_eos",
        "skip_special_tokens",
        "length_penalty",
        "num_beams",
    ]
)


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def _number(kw: Mapping[str, Any], key: str, lo: float, hi: float, default: float, *, lo_open: bool = False) -> float:
    value = kw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, f"expected a number, got {value!r}.")
    if not math.isfinite(value):  # NaN passes every `<`/`>` check below
        raise _bad(key, f"expected a finite number, got {value!r}.")
    if value < lo or value > hi or (lo_open and value == lo):
        low = f"> {lo}" if lo_open else f">= {lo}"
        raise _bad(key, f"{value} is out of range; it must be {low} and <= {hi}.")
    return float(value)


def _integer(kw: Mapping[str, Any], key: str, lo: int, hi: int | None, default: int | None) -> int | None:
    value = kw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"expected an integer, got {value!r}.")
    if value < lo or value > (INT64_MAX if hi is None else hi):
        rng = f"between {lo} and {INT64_MAX}" if hi is None else f"between {lo} and {hi}"
        raise _bad(key, f"{value} is out of range; it must be {rng}.")
    return value


def _stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise _bad("stop", "expected a string or a list of strings.")
    if len(value) > MAX_STOP_STRINGS:
        raise _bad("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(value)}.")
    if any(s == "" for s in value):
        raise _bad("stop", "stop strings must not be empty.")
    if not all(valid_unicode(s) for s in value):
        raise _bad("stop", "stop strings must be valid Unicode (a lone surrogate such as \\ud800 is not).")
    return tuple(dict.fromkeys(value))


def valid_unicode(text: str) -> bool:
    """False for strings holding lone surrogates (JSON's `\\ud800` escapes decode to them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    if not value:
        return ()
    if not isinstance(value, Mapping):
        raise _bad("logit_bias", "expected an object mapping token ids to biases.")
    out = []
    for token, bias in value.items():
        try:
            token_id = int(token)
        except (TypeError, ValueError):
            raise _bad("logit_bias", f"key {token!r} is not a token id.") from None
        if not 0 <= token_id <= INT64_MAX:
            raise _bad("logit_bias", f"key {token!r} is not a token id (a non-negative integer).")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise _bad("logit_bias", f"bias for token {token_id} must be a number in [-100, 100], got {bias!r}.")
        out.append((token_id, float(bias)))
    return tuple(out)


def canonical_kwargs(gen_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Rename aliases and reject unknown keys (naming the close matches)."""
    out: dict[str, Any] = {}
    for key, value in gen_kwargs.items():
        name = ALIASES.get(key, key)
        if name not in KNOWN:
            valid = sorted(KNOWN | set(ALIASES))
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise InvalidRequestError(
                f"Unknown generation argument {key!r}.{hint} Valid: {', '.join(valid)}.", param=key
            )
        if name in out and value is not None and out[name] is not None and out[name] != value:
            raise _bad(name, f"given twice with different values (as {key!r} and an alias).")
        if value is not None or name not in out:
            out[name] = value
    return out


def build_sampling_params(
    gen_kwargs: Mapping[str, Any], defaults: Mapping[str, Any] | None = None, *, vocab_size: int | None = None
) -> SamplingParams:
    """Merge request kwargs over the model's defaults and validate every field."""
    request = canonical_kwargs(gen_kwargs)
    merged = canonical_kwargs(defaults or {})
    # A request that sets one length limit replaces the default's other limit (LLaMA-Factory does the same).
    if request.get("max_new_tokens") is not None:
        merged.pop("max_length", None)
    if request.get("max_length") is not None:
        merged.pop("max_new_tokens", None)
    merged.update({k: v for k, v in request.items() if v is not None})
    kw = merged

    num_beams = kw.get("num_beams", 1)
    if num_beams not in (None, 1):
        raise _bad(
            "num_beams",
            "beam search is not supported (each sequence decodes on its own in a shared batch, "
            "with no beams to rank); use 1, greedy with do_sample false, or n for several samples.",
        )
    do_sample = kw.get("do_sample", True)
    if not isinstance(do_sample, bool):
        raise _bad("do_sample", f"expected true or false, got {do_sample!r}.")
    temperature = _number(kw, "temperature", 0.0, 2.0 if "temperature" in request else 100.0, 1.0)
    if not do_sample:
        temperature = 0.0
    logprobs = kw.get("logprobs")
    top_logprobs = _integer(kw, "top_logprobs", 0, MAX_LOGPROBS, None)
    if isinstance(logprobs, bool):
        n_logprobs = (top_logprobs or 0) if logprobs else None
    elif logprobs is None:
        n_logprobs = None
        if top_logprobs:
            raise _bad("top_logprobs", "requires logprobs: true.")
    else:  # legacy completions: logprobs is the number of alternatives
        n_logprobs = _integer(kw, "logprobs", 0, MAX_LOGPROBS, None)

    stop_token_ids = kw.get("stop_token_ids") or ()
    if not isinstance(stop_token_ids, (list, tuple)) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= INT64_MAX for t in stop_token_ids
    ):
        raise _bad("stop_token_ids", "expected a list of non-negative token ids.")
    bias = _logit_bias(kw.get("logit_bias"))
    if vocab_size is not None:
        for name, ids in (("logit_bias", [t for t, _ in bias]), ("stop_token_ids", stop_token_ids)):
            for token_id in ids:
                if token_id >= vocab_size:
                    raise _bad(name, f"token id {token_id} is outside the vocabulary (size {vocab_size}).")
    seed = _integer(kw, "seed", INT64_MIN, INT64_MAX, None)  # OpenAI's and vLLM's range
    for flag in ("ignore_eos", "skip_special_tokens"):
        if not isinstance(kw.get(flag, False), bool):
            raise _bad(flag, f"expected true or false, got {kw[flag]!r}.")

    return SamplingParams(
        temperature=temperature,
        top_p=_number(kw, "top_p", 0.0, 1.0, 1.0, lo_open=True),
        top_k=max(_integer(kw, "top_k", -1, None, 0) or 0, 0),  # -1 (vLLM) and 0 both mean off
        min_p=_number(kw, "min_p", 0.0, 1.0, 0.0),
        repetition_penalty=_number(kw, "repetition_penalty", 0.0, 10.0, 1.0, lo_open=True),
        presence_penalty=_number(kw, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=_number(kw, "frequency_penalty", -2.0, 2.0, 0.0),
        max_new_tokens=_integer(kw, "max_new_tokens", 1, None, 512) or 512,
        max_length=_integer(kw, "max_length", 1, None, None),
        max_new_tokens_requested=request.get("max_new_tokens") is not None,
        min_new_tokens=_integer(kw, "min_new_tokens", 0, None, 0) or 0,
        stop=_stop_strings(kw.get("stop")),
        stop_token_ids=tuple(stop_token_ids),
        ignore_eos=kw.get("ignore_eos", False),
        seed=seed,
        n=_integer(kw, "num_return_sequences", 1, MAX_N, 1) or 1,
        logprobs=n_logprobs,
        logit_bias=bias,
        skip_special_tokens=kw.get("skip_special_tokens", True),
    )
