"""Telephony: carriers' media streams, translated to and from the conversation's typed commands and outputs."""
