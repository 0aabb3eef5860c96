"""asyncio/uvloop glue: transports, sessions, the peer table, gossip. No protocol decisions live here."""
