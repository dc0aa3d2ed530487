"""HomeKit Data Stream (HDS): how Obscura hands HomeKit Secure Video recordings to a home hub.

The protocol is specified in docs/hds.md. The codec is pure and split by layer, so every layer
can be checked against HAP-NodeJS's reference vectors on its own:

- ``format``: the HDS data format (encode/decode values);
- ``frames``: key derivation, ChaCha20-Poly1305 frames, the header/message payload;
- ``messages``: typed hello / dataSend open, data, ack, close, and media chunking.

The connection side (``session``, ``server``) does the I/O, the timers and the logging.
"""
