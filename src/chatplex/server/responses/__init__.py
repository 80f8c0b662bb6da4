"""The OpenAI Responses API (`/v1/responses`) over a ChatModel.

schemas.py   request items, output items, the Response object and the stream events (OpenAI's shapes)
convert.py   a request (plus the turns it continues) -> chat messages and `build_request` arguments
builder.py   deltas -> stream events and the final Response (non-streaming replies drain the same events)
store.py     the bounded in-memory store behind `previous_response_id`, GET and DELETE
sse.py       events -> `event: <type>` / `data: <json>` server-sent events
"""
