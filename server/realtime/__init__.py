"""The OpenAI Realtime protocol on the wire: client and server events, audio codecs on the
socket, and function calls as the protocol carries them."""
