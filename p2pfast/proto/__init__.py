"""Sans-IO protocol core (h11, aioquic): bytes in, events out, bytes to send; no asyncio, sockets or clock.

`connection.Connection` runs one peer link: the Noise XXpsk3 handshake (`noise`), encrypted frames
(`p2pfast.frames`), control messages (`control`), streams with per-stream credit (`streams`), liveness
timers. `state` holds the transition tables, `events` the immutable events. The long form of the protocol
is docs/protocol.md. Time is always a parameter (`now`, monotonic seconds).
"""
