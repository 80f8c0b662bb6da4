"""Property tests (hypothesis): whatever JSON a client puts in any sampling field, chatplex either refuses it with
an InvalidRequestError naming that field, or builds parameters every engine can take (finite numbers, integers in
64 bits, valid Unicode). A new field added to `sampling.KNOWN` is covered without a new test. The server's body
check is held to the same standard: any non-finite number or lone surrogate anywhere in a body is found, and the
path it names leads to it."""

from __future__ import annotations

import math
import re
from dataclasses import fields

from hypothesis import given, settings
from hypothesis import strategies as st

from chatplex.errors import InvalidRequestError
from chatplex.sampling import ALIASES, INT64_MAX, INT64_MIN, KNOWN, build_sampling_params, canonical_kwargs
from chatplex.server.json_body import check_json_values
from chatplex.types import SamplingParams

VOCAB = 49152
FIELDS = sorted(KNOWN | set(ALIASES))

# Strings with lone surrogates included (hypothesis leaves category Cs out unless asked).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=6)
scalars = (
    st.none() | st.booleans()
    | st.integers() | st.integers(min_value=-(2**80), max_value=2**80) | st.sampled_from([INT64_MAX, INT64_MAX + 1])
    | st.floats(allow_nan=True, allow_infinity=True) | any_text
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4), max_leaves=8
)


def _usable(sp: SamplingParams) -> None:
    for f in fields(sp):
        value = getattr(sp, f.name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            for leaf in item if isinstance(item, tuple) else (item,):
                if isinstance(leaf, float):
                    assert math.isfinite(leaf), (f.name, value)
                elif isinstance(leaf, int) and not isinstance(leaf, bool):
                    assert INT64_MIN <= leaf <= INT64_MAX, (f.name, value)
                elif isinstance(leaf, str):
                    leaf.encode("utf-8")  # raises on a lone surrogate
    assert all(0 <= t < VOCAB for t in sp.stop_token_ids)
    assert all(0 <= t < VOCAB for t, _ in sp.logit_bias)


@settings(max_examples=600, deadline=None)
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_any_value_in_any_field_is_refused_by_name_or_usable(field, value):
    try:
        sp = build_sampling_params({field: value}, vocab_size=VOCAB)
    except InvalidRequestError as e:
        assert e.param in (field, ALIASES.get(field, field)), (field, value, e.param, str(e))
        assert str(e).startswith(f"{e.param}:"), str(e)
    else:
        _usable(sp)


@settings(max_examples=300, deadline=None)
@given(request=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
def test_any_combination_is_refused_naming_one_of_its_fields_or_usable(request):
    try:
        sp = build_sampling_params(request, vocab_size=VOCAB)
    except InvalidRequestError as e:
        named = set(request) | {ALIASES.get(k, k) for k in request}
        assert e.param in named, (request, e.param, str(e))
    else:
        _usable(sp)
        assert set(canonical_kwargs(request)) <= KNOWN


def _bad_leaf(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def _follow(body, path: str):
    """The value a path such as `messages[0].content` names (the dict key holding a bad string is named by its
    parent's path)."""
    if path == "body":
        return body
    for name, index in re.findall(r"(?:^|\.)([^.\[]+)|\[(\d+)\]", path):
        body = body[int(index)] if index else body[name]
    return body


@settings(max_examples=600, deadline=None)
@given(body=st.dictionaries(any_text, json_values, max_size=5))
def test_the_body_check_finds_every_bad_value_and_names_its_path(body):
    leaves, stack = [], [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            leaves.extend(k for k in item if _bad_leaf(k))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif _bad_leaf(item):
            leaves.append(item)
    try:
        check_json_values(body)
    except InvalidRequestError as e:
        assert leaves, (body, str(e))
        if all(re.fullmatch(r"[A-Za-z_]\w*", k, re.ASCII) for k in _keys(body)):  # paths are unambiguous
            named = _follow(body, e.param)
            assert _bad_leaf(named) or isinstance(named, dict), (body, e.param)
    else:
        assert not leaves, body


def _keys(body) -> list:
    out, stack = [], [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            out.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out
