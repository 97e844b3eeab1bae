"""modelpress: the generated contract (modelpress.v1) lives here; the services are in `services`."""

__version__ = "0.1.0"
