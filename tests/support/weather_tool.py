"""The one function tool the tool-calling unit tests share, and a call to it in the Hermes
convention (``<tool_call>`` JSON) that fits its schema and one that does not."""

from typing import Any

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
GOOD = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
BAD = '<tool_call>\n{"name": "get_weather", "arguments": {"town": 3}}\n</tool_call>'
