"""Telephony: carriers' media-stream protocols, translated onto an unchanged Conversation."""
