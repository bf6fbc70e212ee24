"""Errors of tool emulation: the model did not produce a usable call or JSON answer."""

from __future__ import annotations

from proxy.core.errors import UpstreamError


class ToolEmulationError(UpstreamError):
    """The model's answer could not be used after every re-ask (502, ``upstream_error``).

    Codes: ``tool_call_invalid`` (a call did not parse or did not fit its schema),
    ``tool_call_missing`` (``tool_choice`` required a call and none came),
    ``structured_output_invalid`` (the answer was not the requested JSON). The message names
    the tool, the JSON path and the failing schema keyword, never a value; it goes to the client
    only (logs use :attr:`log_code`).
    """

    default_code = "tool_call_invalid"
    default_message = "the model did not produce a valid tool call"
