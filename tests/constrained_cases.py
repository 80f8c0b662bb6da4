"""Requests for constrained output that every engine's suites send (conformance through ChatModel, clients through
chatplex serve): a bounded JSON schema and weather/time tools, small enough that the embedded SmolLM2 finishes."""

from __future__ import annotations

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
PERSON_PROMPT = [{"role": "user", "content": "Describe a person as JSON."}]
WEATHER = [{"role": "user", "content": "What's the weather in Paris?"}]
GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
GET_TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
}
