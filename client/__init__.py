"""Python client for sightline's HTTP API. Imports nothing from the server side."""

from client.api import Client
from client.errors import ApiError
from client.stream import StreamEvent, StreamLost

__all__ = ["ApiError", "Client", "StreamEvent", "StreamLost"]
