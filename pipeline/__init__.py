"""Observability-first delivery pipeline for the WhatsApp Cloud API."""

__version__ = "0.1.0"
