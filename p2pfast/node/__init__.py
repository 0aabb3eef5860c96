"""The node: the services that store, replicate, fetch, serve and delete objects over the network, under
one composition root (root.py). Front ends (front/) use `Node` and the reports; nothing below imports
this package."""

from p2pfast.node.reports import DeleteReport, GetReport, Progress, StoreReport
from p2pfast.node.root import Node

__all__ = ["DeleteReport", "GetReport", "Node", "Progress", "StoreReport"]
