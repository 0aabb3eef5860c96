"""Prometheus metrics on an HTTP listener (config `metrics_listen`; off by default).

prometheus_client does the exposition format and the HTTP server (its threaded WSGI server, on a thread
of its own); this module only says what the node's numbers are. A scrape reads the process counters
(counters.py: plain ints, read as they are) and asks the event loop for Node.status(), whose repo part
runs on the DB thread like every other repo call, so a scrape never touches SQLite from a third thread.
The listener binds 127.0.0.1 unless a host is given: the numbers say what a node holds and who it talks
to, which is not for the whole network to read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from p2pfast.counters import COUNTERS, Counters
from p2pfast.errors import ListenError
from p2pfast.net.peers import split_addr

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from p2pfast.node import Node

log = logging.getLogger("p2pfast.metrics")

SCRAPE_TIMEOUT = 5.0  # a scrape waits this long for the node's status (a busy repo), then goes without


class NodeCollector(Collector):
    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop, counters: Counters = COUNTERS) -> None:
        self.node = node
        self.loop = loop
        self.counters = counters

    def _status(self) -> dict[str, Any] | None:
        try:
            future = asyncio.run_coroutine_threadsafe(self.node.status(), self.loop)
            return future.result(SCRAPE_TIMEOUT)
        except Exception as exc:  # a stopping loop, a busy repo: serve the counters without the gauges
            log.warning("event=scrape_status_failed error=%r", str(exc) or type(exc).__name__)
            return None

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        yield CounterMetricFamily(
            "p2pfast_network_receive_bytes", "Bytes read from peer connections (encrypted).", value=c.bytes_in
        )
        yield CounterMetricFamily(
            "p2pfast_network_transmit_bytes",
            "Bytes written to peer connections (encrypted).",
            value=c.bytes_out,
        )
        yield CounterMetricFamily(
            "p2pfast_handshake_failures",
            "Connections that failed or closed before the Noise handshake completed.",
            value=c.handshake_failures,
        )
        for name, doc, by_limit in (
            (
                "connections_evicted",
                "Incoming connections closed in their handshake to admit a newer one, by the limit reached.",
                c.admission_evicted,
            ),
            (
                "connections_refused",
                "Connections refused at once, by the limit reached.",
                c.admission_refused,
            ),
        ):
            counter = CounterMetricFamily(f"p2pfast_{name}", doc, labels=["limit"])
            for limit, n in sorted(by_limit.items()):
                counter.add_metric([limit], n)
            yield counter
        yield CounterMetricFamily(
            "p2pfast_integrity_failures",
            "Bytes that failed their hash or authentication check, from a peer or on disk.",
            value=c.integrity_failures,
        )
        transfers = CounterMetricFamily(
            "p2pfast_transfers",
            "Finished commands and transfers: store, get, delete (asked of this node); receive, serve "
            "(for peers).",
            labels=["kind", "result"],
        )
        for (kind, result), n in sorted(c.transfers.items()):
            transfers.add_metric([kind, result], n)
        yield transfers
        for name, doc, value in (
            ("repair_copies", "Repair copies made and acknowledged by their receiver.", c.repair_copies),
            ("repair_bytes", "Bytes of the repair copies made.", c.repair_bytes),
            ("repair_failures", "Repair copies tried that did not land.", c.repair_failed),
            (
                "repair_dropped",
                "Surplus copies dropped once others held the file at its target.",
                c.repair_dropped,
            ),
        ):
            yield CounterMetricFamily(f"p2pfast_{name}", doc, value=value)
        for kind, hist in c.latency.items():
            family = HistogramMetricFamily(
                f"p2pfast_{kind}_duration_seconds", f"Time a successful {kind} command took, end to end."
            )
            family.add_metric([], hist.cumulative(), sum_value=hist.total)
            yield family

        status = self._status()
        if status is not None:
            yield from self._gauges(status)

    def _gauges(self, status: dict[str, Any]) -> Iterator[Metric]:
        """The gauges read from the node's status: peers, storage, the scrub's last pass."""
        peers = GaugeMetricFamily("p2pfast_peers", "Peers, by state.", labels=["state"])
        peers.add_metric(["connected"], status["peers_connected"])
        peers.add_metric(["known"], status["peers_known"])
        yield peers
        if status.get("members") is not None:  # the membership view (node/viewsync.py)
            members = GaugeMetricFamily(
                "p2pfast_members", "Members in this node's membership view, by state.", labels=["state"]
            )
            for state, n in status["members"].items():
                members.add_metric([state], n)
            yield members
        gauges = (
            ("files", "Files (keys) stored on this node.", "files"),
            ("objects", "Content objects stored on this node.", "objects"),
            ("stored_bytes", "Plaintext bytes of the objects stored.", "bytes_stored"),
            ("free_bytes", "Bytes free for objects on the data dir's file system.", "bytes_free"),
            (
                "under_replicated_files",
                "Files stored here below the replica target.",
                "under_replicated",
            ),
            ("replica_target", "Copies on peers a file stored here should have.", "replica_target"),
            ("wal_bytes", "Size of the repo's SQLite write-ahead log.", "wal_bytes"),
            ("transfers_in_flight", "Commands and transfers running now.", "in_flight"),
            ("uptime_seconds", "Seconds since the node started.", "uptime_s"),
        )
        for name, doc, key in gauges:
            yield GaugeMetricFamily(f"p2pfast_{name}", doc, value=status[key])
        repair = status.get("repair")
        if repair is not None:
            yield GaugeMetricFamily(
                "p2pfast_repair_queue_files",
                "Files of the repair pass under way still waiting for their copies.",
                value=repair["queue"],
            )
            if repair["last_pass"] is not None:
                yield GaugeMetricFamily(
                    "p2pfast_repair_last_pass_timestamp_seconds",
                    "When the last repair pass began (Unix time).",
                    value=repair["last_pass"]["started_at"],
                )
        scrub = status["scrub"]  # the last finished pass (node/scrub.py); unrepaired: as of now
        for name, doc, key in (
            ("checked_objects", "Objects the last scrub pass read back and verified.", "checked"),
            ("bad_objects", "Local copies the last scrub pass found bad.", "bad"),
            ("repaired_objects", "Bad copies the last scrub pass replaced from a peer.", "repaired"),
            ("unrepaired_objects", "Bad copies kept because no peer had a good one yet.", "unrepaired"),
            ("running", "1 while a scrub pass runs.", "running"),
        ):
            yield GaugeMetricFamily(f"p2pfast_scrub_{name}", doc, value=int(scrub[key]))
        if scrub["last_pass_ended_at"] is not None:
            import datetime

            ended = datetime.datetime.fromisoformat(scrub["last_pass_ended_at"]).timestamp()
            yield GaugeMetricFamily(
                "p2pfast_scrub_last_pass_end_timestamp_seconds",
                "When the last scrub pass finished (Unix time).",
                value=ended,
            )
        info = GaugeMetricFamily(
            "p2pfast_node_info", "The node's id and version.", labels=["node_id", "version"]
        )
        info.add_metric([status["node_id"], status["version"]], 1)
        yield info


class Exporter:
    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop) -> None:
        self.registry = CollectorRegistry(auto_describe=False)  # the node's own: not the global default
        self.registry.register(NodeCollector(node, loop))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, addr: str) -> str:
        """Listen on addr ([HOST]:PORT, host 127.0.0.1 when omitted); returns the bound HOST:PORT."""
        host, port = split_addr(addr, default_host="127.0.0.1")
        try:
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise ListenError.of(f"{addr} (metrics_listen)", exc, "--metrics-listen") from None
        bound_host, bound_port = self._server.server_address[:2]
        return f"{bound_host!s}:{bound_port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # returns once serve_forever has stopped (it polls every 0.5 s)
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
