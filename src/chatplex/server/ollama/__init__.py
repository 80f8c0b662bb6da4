"""Ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/ps`, `/api/version`) over a ChatModel.

One job per module, read in the order a request travels:

- `schemas.py`   request and response bodies, with Ollama's field names (the `ollama` package's `_types.py`)
- `names.py`     `name:tag` -> the served model (or a LoRA adapter); unknown names are Ollama's 404
- `options.py`   `options` -> chatplex's generation arguments, and errors renamed back to Ollama's fields
- `convert.py`   chat and generate bodies -> `ChatModel.build_request` arguments (images, tools, format, think)
- `replies.py`   deltas -> one reply or a stream of chunks ending with the `done` chunk (counts, nanoseconds)
- `ndjson.py`    the stream framing: one JSON object per line, an in-band `{"error": ...}` line on failure
- `model_facts.py` what the model's files say (format, size, parameters, dtype, config) for the listings
- `catalog.py`   the `/api/tags`, `/api/ps` and `/api/show` bodies built from those facts
- `route.py`     the route class: any Content-Type is read as JSON, as Ollama reads it

Embeddings (`/api/embed`) are not served here; `/v1/embeddings` is the server's embeddings endpoint.
"""
