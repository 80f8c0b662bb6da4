"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) over a ChatModel.

    schemas   request and response bodies (Anthropic's shapes and field names)
    messages  Anthropic content blocks -> chatplex's OpenAI-style messages
    convert   a request body -> `ChatModel.build_request` arguments (tools, tool_choice, thinking, sampling)
    blocks    a reply's deltas -> content-block events, and the blocks they add up to
    reply     the non-streaming `Message`
    events    the streamed events, framed as `event: <type>` / `data: <json>` SSE
    errors    chatplex's errors in Anthropic's `{"type": "error", "error": {...}}` shape

The route module (`server.routes.messages`) wires them; nothing here touches an engine directly.
"""
