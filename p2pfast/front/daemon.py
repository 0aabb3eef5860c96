"""`p2pfast serve`: the node with its control socket, its service-manager notifications (sdnotify.py),
its metrics listener (metrics.py), its S3 listener (s3/server.py), and the graceful stop.

Start: repo open and node listening, then the control socket, then metrics, then DATA_DIR/node.json, and
only then READY=1, so that a unit ordered After= this one, or a tool that reads node.json, finds a node
that answers. Stop (SIGTERM/SIGINT; runtime.py): accept
nothing new, let transfers and commands in flight finish within `shutdown_timeout`, abort the rest (an
aborted upload leaves no partial object), close the sessions, checkpoint the WAL (Repo.close) and return,
so the process exits 0. A second signal exits at once (runtime.install_signals): the repo is a WAL
database written with synchronous=FULL and objects are renamed into place only when complete, so even
that loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from p2pfast import runtime
from p2pfast.front import commands
from p2pfast.front.ctl.codec import SOCKET_NAME
from p2pfast.front.ctl.server import CtlServer
from p2pfast.front.sdnotify import Notifier
from p2pfast.node import Node

log = logging.getLogger("p2pfast.daemon")

# Seconds between STATUS= updates to the service manager; each costs a few counting queries.
STATUS_INTERVAL = 10.0


async def serve(
    node: Node,
    shutdown_timeout: float,
    metrics_listen: str | None = None,
    s3_listen: str | None = None,
    gateway_listen: str | None = None,
) -> None:
    notifier = Notifier.from_environ()
    runtime.install_signals(node.stop)

    async def handle(request: dict[str, Any], fds: list[int], progress: Any) -> dict[str, Any]:
        return await commands.execute(node, request, fds, progress)

    server = CtlServer(node.layout.root / SOCKET_NAME, handle)
    exporter = None
    s3: Any = None
    gateway: Any = None
    tasks: list[asyncio.Task[None]] = []
    try:
        await node.start()
        await server.start()  # after the repo is open and the node listens: commands can run
        runtime_info: dict[str, str] = {}
        if metrics_listen is not None:
            from p2pfast.front.metrics import Exporter

            exporter = Exporter(node, asyncio.get_running_loop())
            addr = exporter.start(metrics_listen)
            runtime_info["metrics"] = addr
            log.info("event=metrics_listening addr=%s", addr)
        if s3_listen is not None:
            from p2pfast.front.s3.server import S3Server

            s3 = S3Server(node)
            addr = await s3.start(s3_listen)
            runtime_info["s3"] = addr
            log.info("event=s3_listening addr=%s", addr)
        if gateway_listen is not None:
            from p2pfast.front.gateway import Gateway

            gateway = Gateway(node)
            addr = await gateway.start(gateway_listen)
            runtime_info["gateway"] = addr
            log.info("event=gateway_listening addr=%s", addr)
        # node.json last: a tool that finds it naming this pid finds ctl.sock and metrics answering.
        node.set_runtime_info(**runtime_info)
        if notifier is not None:
            notifier.ready(await _status_line(node))
            tasks.append(asyncio.create_task(_report_status(node, notifier)))
            if notifier.watchdog_interval is not None:
                tasks.append(asyncio.create_task(_watchdog(notifier, notifier.watchdog_interval)))
        log.info("event=ready node=%s listen=%s", node.node_id, node.peers.listen_addr)
        # One plain line whatever the log level, so a person who typed `serve` sees that it works.
        s = await node.status()
        print(
            f"p2pfast: serving node {node.node_id[:16]} on {node.peers.listen_addr} ({node.layout.root}): "
            f"{s['peers_connected']} peers connected, {s['peers_known']} known, {s['files']} files",
            file=sys.stderr,
            flush=True,
        )
        await node.wait_stopped()

        if notifier is not None:
            notifier.stopping(f"stopping: {len(node.in_flight())} transfers in flight")
        # The control socket stays open while draining: `status` still answers, and a new store or get
        # gets a one-line "shutting down" (Node.working) instead of racing for the data dir lock.
        aborted = await node.drain(shutdown_timeout)
        log.info("event=shutdown phase=drained aborted=%d", aborted)
    finally:
        for t in tasks:
            t.cancel()
        if exporter is not None:
            exporter.close()
        if s3 is not None:
            await s3.close()
        if gateway is not None:
            await gateway.close()
        await server.close()
        await node.close()  # closes sessions, then the repo: TRUNCATE checkpoint of the WAL
        if notifier is not None:
            notifier.close()
    log.info("event=stopped node=%s", node.node_id)


async def _status_line(node: Node) -> str:
    s = await node.status()
    return (
        f"{s['peers_connected']} peers connected ({s['peers_known']} known), {s['files']} files, "
        f"{s['objects']} objects, {s['under_replicated']} under-replicated"
    )


async def _report_status(node: Node, notifier: Notifier) -> None:
    last = ""
    while True:
        await asyncio.sleep(STATUS_INTERVAL)
        try:
            line = await _status_line(node)
        except Exception as exc:  # a busy repo must not end the reports
            log.debug("event=status_failed error=%r", exc)
            continue
        if line != last:
            notifier.status(line)
            last = line


async def _watchdog(notifier: Notifier, interval: float) -> None:
    # From the event loop on purpose: a loop that stops turning stops the pings, and systemd restarts us.
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
