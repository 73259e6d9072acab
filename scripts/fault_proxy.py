#!/usr/bin/env python3
"""A TCP proxy that fails the way networks between hosts fail: silently.

The faults met most often between hosts send nothing at all: no FIN, no RST, no error,
only silence, which a client notices solely through timeouts of its own (heartbeats,
keepalives, read or query timeouts). `FaultProxy` sits between a service and one server
(PostgreSQL, RabbitMQ, Redis) and plays those faults on demand. Its modes:

- passing (the default): bytes are forwarded both ways as they come; an end of stream
  (FIN) is forwarded as one (half-close), a reset (RST) as a reset. A new connection is
  connected upstream at once; if the upstream refuses it, the accepted connection is
  reset, as close as a proxy gets to "connection refused".
- `partition()` / `heal()`: a network partition, or a host that stopped answering
  without closing anything (a VM paused, a cable pulled, a switch dropping everything).
  Every connection, open or new, is frozen: nothing is read from either side (the data
  waits in the kernel's buffers, then the senders' windows fill), nothing is written,
  and nothing is closed, not even when one side closes (its FIN waits in the buffer
  too). New TCP connections are accepted (the kernel's handshake) but not connected
  upstream. `heal()` ends it: frozen connections forward what they held, closes
  included, and the held new connections are connected upstream.
- `freeze_current_for_good()`: a failover behind a stable address (a virtual IP moved,
  a DNS name or a PgBouncer/HAProxy re-pointed to the new primary): the connections open
  now lead to the old host, gone without a word, so they are frozen for good, never
  forwarded again and never closed (until `close_all()` or `stop()`), while new
  connections pass at once. (Here the server behind is the same one: the old sessions
  live on there, as on a partitioned old primary, until its own timeouts end them.)
- `close_all()`: the proxy or a middlebox restarted: every connection, frozen ones
  included, is closed (FIN) at once; new connections pass.
- `redirect(host, port)`: new connections go to another upstream; open ones stay
  where they are. With `freeze_current_for_good()`, a failover to another server.

One thread runs every connection (selectors: epoll on Linux), reading up to 256 KiB at
a time and forwarding at once; a peer that reads slowly stops the reading of its
counterpart (the bytes wait in the kernel, not in Python). Control calls come from any
thread and take effect before they return. `python3 scripts/fault_proxy.py --self-test`
checks every mode against a local Redis (redis-cli on port 6379, or --redis-port).
"""

import argparse
import contextlib
import errno
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
CHUNK = 256 * 1024

HELD, CONNECTING, OPEN, CLOSED = "held", "connecting", "open", "closed"
_LISTENER, _WAKE = object(), object()


class _Pipe:
    """One proxied connection: the accepted client socket and its upstream socket."""

    __slots__ = (
        "client",
        "client_eof",
        "client_mask",
        "lost",
        "state",
        "to_client",
        "to_upstream",
        "upstream",
        "upstream_eof",
        "upstream_mask",
    )

    def __init__(self, client):
        self.client, self.upstream = client, None
        self.state, self.lost = HELD, False
        self.to_upstream, self.to_client = bytearray(), bytearray()
        self.client_eof = self.upstream_eof = False
        self.client_mask = self.upstream_mask = 0


def _nodelay(sock):
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FaultProxy:
    """A TCP proxy from 127.0.0.1:`listen_port` (0: any free port, then `.port`) to
    `upstream_host`:`upstream_port`, with the fault modes of the module's docstring."""

    def __init__(self, listen_port, upstream_host, upstream_port, listen_host="127.0.0.1", name=None):
        self.name = name or f"proxy:{listen_port}->{upstream_host}:{upstream_port}"
        self._listen = (listen_host, listen_port)
        self._upstream = self._resolve(upstream_host, upstream_port)
        self.port = listen_port
        self._partitioned = False
        self._pipes = set()
        self._commands = []
        self._lock = threading.Lock()
        self._thread = None
        self._stopped = False
        self._accept_paused_until = None
        self._buffer = bytearray(CHUNK)
        self._view = memoryview(self._buffer)
        self.accepted = self.refused = self.bytes_up = self.bytes_down = 0

    def __repr__(self):
        return f"<FaultProxy {self.name} {self.stats()}>"

    # --- control (any thread) -----------------------------------------------------------

    def start(self):
        """Listens and starts forwarding; returns self."""
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(self._listen)
        self._listener.listen(1024)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, READ, _LISTENER)
        self._selector.register(self._wake_r, READ, _WAKE)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Closes every connection (frozen ones included) and the listener."""
        if self._thread is None or self._stopped:
            return
        self._call(self._stop)
        self._thread.join()
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def partition(self):
        """Freezes every connection, open and new, until heal(); returns how many are open."""
        return self._call(self._partition)

    def heal(self):
        """Ends a partition: frozen connections forward what they held, held ones connect."""
        return self._call(self._heal)

    def freeze_current_for_good(self):
        """Freezes the connections open now until close_all()/stop(); new ones pass.
        Returns how many were frozen."""
        return self._call(self._freeze_for_good)

    def close_all(self):
        """Closes every connection, frozen ones included; returns how many."""
        return self._call(self._close_all)

    def redirect(self, host, port):
        """New connections go to host:port; open ones stay where they are."""
        address = self._resolve(host, port)
        return self._call(lambda: setattr(self, "_upstream", address))

    def stats(self):
        """Counts of connections by state, and totals."""
        if self._thread is None or self._stopped:
            return self._stats()
        return self._call(self._stats)

    # --- the loop's side ------------------------------------------------------------------

    @staticmethod
    def _resolve(host, port):
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return family, address

    def _call(self, function):
        """Runs function on the loop's thread and returns its result."""
        if self._thread is None or self._stopped:
            raise RuntimeError(f"{self.name} is not running")
        done, result = threading.Event(), []
        with self._lock:
            self._commands.append((function, done, result))
        with contextlib.suppress(BlockingIOError):  # the loop has wake-ups pending already
            self._wake_w.send(b"x")
        done.wait()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def _run(self):
        while not self._stopped:
            timeout = None
            if self._accept_paused_until is not None:
                timeout = self._accept_paused_until - time.monotonic()
                if timeout <= 0:
                    self._accept_paused_until, timeout = None, None
                    self._selector.register(self._listener, READ, _LISTENER)
            for key, mask in self._selector.select(timeout):
                if key.data is _WAKE:
                    self._commands_due()
                elif key.data is _LISTENER:
                    self._accept()
                else:
                    pipe, from_client = key.data
                    # Only what is still wanted: a command earlier in this batch may
                    # have frozen or closed the pipe since the poll.
                    mask &= pipe.client_mask if from_client else pipe.upstream_mask
                    if mask and pipe.state != CLOSED:
                        try:
                            self._event(pipe, from_client, mask)
                        except Exception as e:  # a bug here must not stop every connection
                            print(f"{self.name}: {type(e).__name__}: {e}; connection reset", file=sys.stderr)
                            self._close(pipe, reset=True)
                if self._stopped:
                    break

    def _commands_due(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            commands, self._commands = self._commands, []
        for function, done, result in commands:
            try:
                result.append(function())
            except Exception as e:  # handed to the caller
                result.append(e)
            done.set()

    def _stop(self):
        self._close_all()
        self._stopped = True

    def _partition(self):
        self._partitioned = True
        for pipe in self._pipes:
            self._update(pipe)
        return len(self._pipes)

    def _heal(self):
        self._partitioned = False
        for pipe in list(self._pipes):
            if pipe.state == HELD and not pipe.lost:
                self._connect(pipe)
            self._update(pipe)
        return len(self._pipes)

    def _freeze_for_good(self):
        for pipe in self._pipes:
            pipe.lost = True
            self._update(pipe)
        return len(self._pipes)

    def _close_all(self):
        pipes = list(self._pipes)
        for pipe in pipes:
            self._close(pipe)
        return len(pipes)

    def _stats(self):
        states = {"open": 0, "connecting": 0, "held": 0, "frozen_for_good": 0}
        for pipe in self._pipes:
            states["frozen_for_good" if pipe.lost else pipe.state] += 1
        return dict(
            states,
            partitioned=self._partitioned,
            accepted=self.accepted,
            refused=self.refused,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
        )

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # Out of descriptors: the rest wait in the backlog, and the listener is
                # left alone for a moment (it would be readable again at once).
                print(f"{self.name}: accept failed ({e}); accepting again in 0.1 s", file=sys.stderr)
                self._selector.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + 0.1
                return
            _nodelay(client)
            self.accepted += 1
            pipe = _Pipe(client)
            self._pipes.add(pipe)
            if not self._partitioned:
                self._connect(pipe)
            self._update(pipe)

    def _connect(self, pipe):
        family, address = self._upstream
        try:
            upstream = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:  # out of descriptors
            print(f"{self.name}: no socket for the upstream ({e}); connection reset", file=sys.stderr)
            self.refused += 1
            self._close(pipe, reset=True)
            return
        _nodelay(upstream)
        pipe.upstream = upstream
        err = upstream.connect_ex(address)
        if err == 0:
            pipe.state = OPEN
        elif err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
            pipe.state = CONNECTING
        else:
            self.refused += 1
            self._close(pipe, reset=True)

    def _want(self, pipe, sock, from_client, mask):
        current = pipe.client_mask if from_client else pipe.upstream_mask
        if mask == current:
            return
        if current == 0:
            self._selector.register(sock, mask, (pipe, from_client))
        elif mask == 0:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, mask, (pipe, from_client))
        if from_client:
            pipe.client_mask = mask
        else:
            pipe.upstream_mask = mask

    def _update(self, pipe):
        """Watches what the pipe's state and mode call for, and nothing while frozen."""
        if pipe.state == CLOSED:
            return
        client = upstream = 0
        if pipe.lost or self._partitioned or pipe.state == HELD:
            pass
        elif pipe.state == CONNECTING:
            upstream = WRITE
        else:
            # Read a side only once what it sent before is gone: backpressure.
            if pipe.to_upstream:
                upstream |= WRITE
            elif not pipe.client_eof:
                client |= READ
            if pipe.to_client:
                client |= WRITE
            elif not pipe.upstream_eof:
                upstream |= READ
        self._want(pipe, pipe.client, True, client)
        if pipe.upstream is not None:
            self._want(pipe, pipe.upstream, False, upstream)

    def _event(self, pipe, from_client, mask):
        if pipe.state == CONNECTING:
            err = pipe.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.refused += 1
                self._close(pipe, reset=True)
                return
            pipe.state = OPEN
        else:
            if mask & READ:
                self._read(pipe, from_client)
            if mask & WRITE and pipe.state != CLOSED:
                self._flush(pipe, from_client)
            if pipe.state == CLOSED:
                return
        self._update(pipe)

    def _read(self, pipe, from_client):
        """Reads what one side sent and forwards it at once; keeps the rest for later."""
        source, sink = (pipe.client, pipe.upstream) if from_client else (pipe.upstream, pipe.client)
        pending = pipe.to_upstream if from_client else pipe.to_client
        try:
            n = source.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pipe, reset=True)
            return
        if n == 0:
            if from_client:
                pipe.client_eof = True
            else:
                pipe.upstream_eof = True
            if not pending:
                self._shutdown(sink)
            self._finish_if_done(pipe)
            return
        if from_client:
            self.bytes_up += n
        else:
            self.bytes_down += n
        if pending:  # behind what waits already: keep the order
            pending += self._view[:n]
            return
        try:
            sent = sink.send(self._view[:n])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(pipe, reset=True)
            return
        if sent < n:
            pending += self._view[sent:n]

    def _flush(self, pipe, to_client):
        """Sends what waits for one side; forwards the other side's FIN once it is out."""
        sink = pipe.client if to_client else pipe.upstream
        pending = pipe.to_client if to_client else pipe.to_upstream
        if not pending:
            return
        try:
            sent = sink.send(pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(pipe, reset=True)
            return
        del pending[:sent]
        if not pending and (pipe.upstream_eof if to_client else pipe.client_eof):
            self._shutdown(sink)
            self._finish_if_done(pipe)

    @staticmethod
    def _shutdown(sock):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    def _finish_if_done(self, pipe):
        if pipe.client_eof and pipe.upstream_eof and not pipe.to_client and not pipe.to_upstream:
            self._close(pipe)

    def _close(self, pipe, reset=False):
        if pipe.state == CLOSED:
            return
        for sock, from_client in ((pipe.client, True), (pipe.upstream, False)):
            if sock is None:
                continue
            self._want(pipe, sock, from_client, 0)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        pipe.state = CLOSED
        self._pipes.discard(pipe)


# --- self-test ------------------------------------------------------------------------------


class _RedisConnection:
    """A raw connection to Redis (RESP inline commands), reads bounded by a timeout."""

    def __init__(self, port, timeout=1.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send(self, command):
        self.sock.sendall(command.encode() + b"\r\n")

    def reply(self):
        """The next reply line; None on a timeout, b"" on end of stream or a reset."""
        data = b""
        try:
            while not data.endswith(b"\r\n"):
                chunk = self.sock.recv(4096)
                if not chunk:
                    return b""
                data += chunk
        except TimeoutError:
            return None
        except ConnectionResetError:
            return b""
        return data.strip()

    def command(self, command):
        self.send(command)
        return self.reply()

    def close(self):
        self.sock.close()


def _cli_ping(port, timeout=1.0):
    """redis-cli PING through port: its output, or None when it did not answer in time."""
    try:
        out = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return (out.stdout + out.stderr).strip()


def self_test(redis_port=6379):
    failures = []

    def check(what, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {what}{f' ({detail})' if detail else ''}", flush=True)
        if not ok:
            failures.append(what)

    if _cli_ping(redis_port) != "PONG":
        raise SystemExit(f"fault_proxy self-test: no Redis answers PING on port {redis_port}")
    proxy = FaultProxy(0, "127.0.0.1", redis_port, name="self-test").start()
    port = proxy.port
    print(f"fault_proxy self-test: 127.0.0.1:{port} -> Redis on 127.0.0.1:{redis_port}")
    try:
        check("passing: redis-cli PING through the proxy answers PONG", _cli_ping(port) == "PONG")
        old = _RedisConnection(port)
        check("passing: an open connection answers", old.command("PING") == b"+PONG")

        proxy.partition()
        started = time.monotonic()
        answer = _cli_ping(port, timeout=1.0)
        check(
            "partition: redis-cli PING with a 1 s timeout fails",
            answer is None,
            f"{answer!r} after {time.monotonic() - started:.1f} s",
        )
        check("partition: the open connection's PING hangs, unclosed", old.command("PING") is None)
        victim = _RedisConnection(port)  # accepted during the partition, not forwarded
        victim.send("PING")
        late = subprocess.Popen(["redis-cli", "-p", str(port), "PING"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        check("partition: nothing answered yet", victim.reply() is None and late.poll() is None)

        proxy.heal()
        check("heal: the open connection gets the PONG it waited for", old.reply() == b"+PONG")
        check("heal: the connection accepted during the partition is forwarded", victim.reply() == b"+PONG")
        out, _ = late.communicate(timeout=3)
        check("heal: the redis-cli started during the partition answers PONG", out.strip() == "PONG")
        check("heal: redis-cli PING passes again", _cli_ping(port) == "PONG")

        killed = _RedisConnection(port)
        client_id = killed.command("CLIENT ID").lstrip(b":").decode()
        proxy.partition()
        subprocess.run(
            ["redis-cli", "-p", str(redis_port), "CLIENT", "KILL", "ID", client_id], check=True, capture_output=True
        )
        check("partition: the server's close is not seen", killed.reply() is None)
        proxy.heal()
        check("heal: the server's close arrives", killed.reply() == b"")

        proxy.freeze_current_for_good()
        check("freeze for good: the open connection's PING hangs", old.command("PING") is None)
        check("freeze for good: a new connection answers at once", _cli_ping(port) == "PONG")
        time.sleep(1)
        check("freeze for good: the open connection stays open and silent", old.reply() is None)
        stats = proxy.stats()
        check("freeze for good: counted", stats["frozen_for_good"] >= 1, str(stats))

        many = [_RedisConnection(port, timeout=5) for _ in range(300)]
        for connection in many:
            connection.send("PING")
        check("300 connections at once answer", all(c.reply() == b"+PONG" for c in many))
        for connection in many:
            connection.close()

        quick = _RedisConnection(port, timeout=5)
        rounds, started = 5000, time.monotonic()
        for _ in range(rounds):
            quick.send("PING")
            assert quick.reply() == b"+PONG"
        elapsed = time.monotonic() - started
        check("round trips in sequence", True, f"{rounds / elapsed:.0f}/s, {elapsed / rounds * 1e6:.0f} µs each")
        for name, target in (("direct", redis_port), ("through the proxy", port)):
            bench = subprocess.run(
                ["redis-benchmark", "-p", str(target), "-c", "50", "-n", "20000", "-t", "set,get", "-q"],
                capture_output=True,
                text=True,
            )
            rates = "; ".join(
                part.strip() for part in re.split(r"[\r\n]", bench.stdout) if "requests per second" in part
            )
            check(f"redis-benchmark {name}", bench.returncode == 0, rates)

        proxy.redirect("127.0.0.1", 1)  # nothing listens on port 1
        answer = _cli_ping(port)
        check("redirect to a closed port: a new connection fails at once", answer not in (None, "PONG"), answer)
        proxy.redirect("127.0.0.1", redis_port)
        check("redirect back: PING passes", _cli_ping(port) == "PONG")

        check("close_all: closes them all, frozen ones included", proxy.close_all() >= 2)
        check("close_all: the frozen connection sees its end", old.reply() == b"")
        check("close_all: a new connection passes", _cli_ping(port) == "PONG")

        frozen = _RedisConnection(port)
        check("stop: a connection answers before", frozen.command("PING") == b"+PONG")
        proxy.freeze_current_for_good()
    finally:
        proxy.stop()
    check("stop: releases a frozen-for-good connection", frozen.reply() == b"")
    print(f"fault_proxy self-test: {'all passed' if not failures else f'{len(failures)} failed'}")
    return not failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-test", action="store_true", help="check every mode against a local Redis")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--listen", type=int, help="run a plain proxy on this port (with --upstream host:port)")
    parser.add_argument("--upstream")
    args = parser.parse_args()
    if args.self_test:
        sys.exit(0 if self_test(args.redis_port) else 1)
    if args.listen is None or not args.upstream:
        parser.error("--self-test, or --listen and --upstream")
    host, _, port = args.upstream.rpartition(":")
    proxy = FaultProxy(args.listen, host, int(port)).start()
    print(f"proxying 127.0.0.1:{proxy.port} -> {args.upstream}; Ctrl-C stops", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
