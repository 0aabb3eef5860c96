"""Disk and crypto: the encrypted content store. Synchronous; the network layer runs it in an executor."""
