"""p2pfast: a small, fast, encrypted peer-to-peer storage node."""

__version__ = "0.3.0"
