"""One side of a loopback transfer, run as its own process by bench_transfer.py.

    transfer_peer.py session-server      serve: on a "get", stream `length` bytes on the request's stream
    transfer_peer.py session-client PORT SIZE
    transfer_peer.py raw-server          plain uvloop TCP: send SIZE bytes to whoever connects
    transfer_peer.py raw-client PORT SIZE

Servers print "PORT <n>" when listening; clients print one JSON line {"bytes", "seconds", "maxrss_mib",
"cpu_s", "xfer_cpu_s"}; servers print the same kind of line (their peak RSS) after their one transfer, then
exit. `xfer_cpu_s` is the CPU time (user + system) the process spent from the start to the end of the
transfer, without interpreter start-up and imports.
Both session sides share the network key passed in P2PFAST_BENCH_NETKEY (hex).
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from typing import Any, cast

import orjson

from p2pfast import runtime
from p2pfast.identity import node_id_of
from p2pfast.net.limits import NetLimits
from p2pfast.net.peers import PeerEvents, PeerManager
from p2pfast.net.session import Session
from p2pfast.proto import messages as m
from p2pfast.proto import noise

CHUNK = 1 << 20


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report(fields: dict[str, Any], xfer_cpu: float) -> None:
    """One JSON line: the figures, this process's peak RSS and CPU seconds (all, and the transfer's)."""
    line = {**fields, "maxrss_mib": _rss(), "cpu_s": _cpu(), "xfer_cpu_s": xfer_cpu}
    print(orjson.dumps(line).decode(), flush=True)


def _manager(handler: Any, ready: Any = None) -> PeerManager:
    key = noise.generate_keypair()

    async def on_ready(session: Session) -> None:
        if ready is not None:
            ready(session)

    async def on_closed(session: Session) -> None:
        return None

    return PeerManager(
        node_id=node_id_of(noise.public_bytes(key)),
        static_key=key,
        network_key=bytes.fromhex(os.environ["P2PFAST_BENCH_NETKEY"]),
        limits=NetLimits(),
        handler=handler,
        events=PeerEvents(on_ready=on_ready, on_closed=on_closed),
    )


async def session_server() -> None:
    done = asyncio.Event()
    payload = memoryview(bytes(CHUNK))
    served: list[Session] = []
    cpu: list[float] = []

    async def handler(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        assert isinstance(msg, m.Get)
        served.append(session)
        cpu.append(_cpu())
        stream = session.stream(msg.sid)
        left = msg.length
        while left > 0:
            n = min(left, CHUNK)
            await stream.write(payload[:n])
            left -= n
        await stream.write_eof()
        cpu.append(_cpu())
        done.set()
        return m.Ok()

    mgr = _manager(handler)
    addr = await mgr.listen("127.0.0.1:0")
    print("PORT", addr.rsplit(":", 1)[1], flush=True)
    await done.wait()
    # The client closes once it has the whole stream and the reply: close only after that.
    await asyncio.wait_for(served[0].closed_event.wait(), 60)
    await mgr.close()
    _report({}, cpu[1] - cpu[0])


async def session_client(port: int, size: int) -> None:
    async def handler(session: Session, msg: m.Request | m.Notice) -> m.Reply | None:
        return None

    ready: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
    mgr = _manager(handler, lambda s: ready.done() or ready.set_result(s))
    await mgr.listen("127.0.0.1:0")
    mgr.start()
    mgr.dial_soon(f"127.0.0.1:{port}")
    session = await asyncio.wait_for(ready, 10)
    got = 0

    def sink(view: memoryview) -> None:
        nonlocal got
        got += len(view)

    stream = session.open_stream()
    stream.set_sink(sink)
    t0, cpu0 = time.perf_counter(), _cpu()
    reply = asyncio.ensure_future(
        session.request(m.Get(cid="b3:" + "0" * 64, offset=0, length=size, sid=stream.sid), timeout=600)
    )
    eof = asyncio.ensure_future(stream.wait_eof())
    await asyncio.wait([reply, eof], return_when=asyncio.FIRST_EXCEPTION)
    if reply.done() and reply.exception():
        raise reply.exception()  # type: ignore[misc]
    await eof
    dt, cpu1 = time.perf_counter() - t0, _cpu()
    await reply
    await mgr.close()
    _report({"bytes": got, "seconds": dt}, cpu1 - cpu0)


class _RawSender(asyncio.Protocol):
    def __init__(self, size: int, done: asyncio.Event) -> None:
        self.size, self.done = size, done
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.cpu0 = _cpu()
        self.transport = cast(asyncio.Transport, transport)
        asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        payload = memoryview(bytes(CHUNK))
        left = self.size
        while left > 0:
            await self.can_write.wait()
            n = min(left, CHUNK)
            self.transport.write(payload[:n])
            left -= n
        self.transport.close()
        self.cpu = _cpu() - self.cpu0
        self.done.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()


class _RawReceiver(asyncio.BufferedProtocol):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.buf = memoryview(bytearray(256 * 1024))
        self.got = 0
        self.done = done

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.got += nbytes

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.got)


async def raw_server(size: int) -> None:
    done = asyncio.Event()
    senders: list[_RawSender] = []

    def factory() -> _RawSender:
        senders.append(_RawSender(size, done))
        return senders[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await done.wait()
    server.close()
    _report({}, senders[0].cpu)


async def raw_client(port: int) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    t0, cpu0 = time.perf_counter(), _cpu()
    await loop.create_connection(lambda: _RawReceiver(done), "127.0.0.1", port)
    got = await done
    dt = time.perf_counter() - t0
    _report({"bytes": got, "seconds": dt}, _cpu() - cpu0)


def main() -> None:
    mode = sys.argv[1]
    if mode == "session-server":
        runtime.run(session_server())
    elif mode == "session-client":
        runtime.run(session_client(int(sys.argv[2]), int(sys.argv[3])))
    elif mode == "raw-server":
        runtime.run(raw_server(int(sys.argv[2])))
    elif mode == "raw-client":
        runtime.run(raw_client(int(sys.argv[2])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
