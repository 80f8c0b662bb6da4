"""Structured output: JSON objects, JSON-schema replies and forced tool calls by constrained decoding.

Two halves, one job each:

- `spec.py` turns what the user asked for (`response_format`, `tool_choice` required / a named function) into a
  `chatplex.types.Constraint`: an engine-independent grammar (llguidance's JSON form) plus the plain JSON schema
  where there is one (llama.cpp turns that into GBNF). Bad schemas fail here, naming the request field.
- `matcher.py` is what an in-process engine runs per sequence: a compiled grammar that gives the allowed-token
  mask before each sampling step and advances with each accepted token.

Why llguidance (of xgrammar, llguidance and outlines-core, all of which install from PyPI for CPU here):

- It installs from PyPI as one self-contained abi3 wheel with no Python dependencies. xgrammar 0.2.8 requires
  torch, triton and apache-tvm-ffi, so installing it can replace the project's pinned torch build; outlines-core
  compiles a schema to a regex and then builds a full token index up front (seconds for larger schemas, no
  recursive schemas).
- Masks are computed lazily per step (an Earley parser over a token trie, tens of microseconds for JSON), so
  there is no per-schema warm-up: compiling a request's grammar is cheap, which suits one schema per request.
- Its Lark front end embeds JSON schemas inside a larger grammar (`%json{...}`), which is exactly what forcing a
  family's tool-call syntax (`<tool_call>{...}</tool_call>`) with schema-checked arguments needs.

Measured overhead (embedded SmolLM2-135M, fp32, greedy, 64 tokens, a shared and busy 2-core CPU): computing a
mask and advancing the matcher costs ~120 us per token per row (bit-unpacking included); compiling a schema for
n=8 sequences ~1 ms; building llguidance's tokenizer once ~2 s. End to end the difference is inside the noise:
batch 1 free 13-15.5 tok/s vs schema 13.7-14.4; batch 8 free 61.8-63.7 vs schema 62.3-62.6.
"""

from chatplex.structured.spec import constraint_for_response_format, constraint_for_tool_choice, request_constraint

__all__ = ["constraint_for_response_format", "constraint_for_tool_choice", "request_constraint"]
