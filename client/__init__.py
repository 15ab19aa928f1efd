"""Python client for sightline's HTTP API. Imports nothing from the server side."""

from client.api import ApiError, Client

__all__ = ["ApiError", "Client"]
