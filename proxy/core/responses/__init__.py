"""The OpenAI Responses API over the E2EE chat path, as pure translation.

- :mod:`proxy.core.responses.request`: a Responses request -> the chat request that serves it
  (and the refusals, each naming its parameter);
- :mod:`proxy.core.responses.events`: decrypted chat chunks -> the Responses event sequence and
  the final ``response`` object.
"""

from proxy.core.responses.events import ResponseBuilder, encode_event, map_usage
from proxy.core.responses.request import ResponsesRequest, translate_request

__all__ = ["ResponseBuilder", "ResponsesRequest", "encode_event", "map_usage", "translate_request"]
