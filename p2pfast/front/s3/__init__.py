"""The S3 API and the read-only HTTP gateway (docs/gateway.md): a front end over the node's API, served
from the node's own event loop. sigv4.py checks AWS Signature V4 (sans-IO), errors.py is the S3 error
document, xmldoc.py the XML bodies, names.py the map from bucket and key to the p2pfast key space,
server.py the listener."""
