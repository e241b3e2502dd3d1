"""Who is still there: a lost process of a ``dist_sync`` job stops the whole job, with a message.

MXNet's parameter server (ps-lite) waits forever for a process that died: a synchronous push or
pull blocks until every worker has pushed, and no survivor is told.  ps-lite's heartbeats
(``PS_HEARTBEAT_INTERVAL``/``PS_HEARTBEAT_TIMEOUT``) only record, at the scheduler, when each node
was last heard of, for a replacement node to take over the dead one's id; nothing stops or warns the
others.  So mxbn keeps a roll call of its own beside ps-lite's connections:

* the scheduler process listens on ``MXBN_LIVENESS_PORT`` (default: ``DMLC_PS_ROOT_PORT + 1``);
* every server and worker connects to it, says who it is, and from then on the two sides send each
  other a heartbeat every ``MXBN_LIVENESS_INTERVAL`` seconds (default 1);
* a member whose connection closes before it said it was done has ended (killed or crashed: the
  kernel closes a dead process's sockets, so this is seen at once); one not heard of for
  ``MXBN_LIVENESS_TIMEOUT`` seconds (default 10) is cut off (its host or its network is down);
* the scheduler then tells every member which process was lost, and each process prints it and
  exits with ``LOST_PEER_EXIT``; a member that loses the scheduler does the same by itself.

The processes leave at once (``os._exit``): their main threads are blocked inside MXNet waiting for
the lost peer and cannot be interrupted.  Files in the middle of an atomic write keep their old
contents, so the last checkpoint is whole, and the job restarts with ``--resume``.
"""
import atexit
import json
import os
import socket
import sys
import threading
import time

__all__ = ["LOST_PEER_EXIT", "Settings", "settings_from_env", "RollCall", "Member", "start_for_role"]

# EX_UNAVAILABLE (sysexits.h): a service this process needs is gone.
LOST_PEER_EXIT = 69


class Settings:
    """Where the roll call listens and how often it expects word."""

    def __init__(self, host, port, interval=1.0, timeout=10.0):
        if not timeout > 2 * interval > 0:
            raise ValueError(f"MXBN_LIVENESS_TIMEOUT ({timeout}) must exceed twice MXBN_LIVENESS_INTERVAL "
                             f"({interval}), and both be positive")
        self.host, self.port, self.interval, self.timeout = host, port, interval, timeout


def _number(environ, name, default, kind=float):
    text = environ.get(name)
    if text in (None, ""):
        return default
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None


def settings_from_env(environ=os.environ):
    """The roll call's settings from a distributed job's variables, or None when it is off
    (``MXBN_LIVENESS=0``, or not a ``DMLC_*`` job)."""
    if environ.get("MXBN_LIVENESS", "1") == "0" or not environ.get("DMLC_PS_ROOT_URI"):
        return None
    root_port = _number(environ, "DMLC_PS_ROOT_PORT", None, int)
    if root_port is None:
        return None
    return Settings(environ["DMLC_PS_ROOT_URI"], _number(environ, "MXBN_LIVENESS_PORT", root_port + 1, int),
                    _number(environ, "MXBN_LIVENESS_INTERVAL", 1.0), _number(environ, "MXBN_LIVENESS_TIMEOUT", 10.0))


def _say(message):
    """One line on stderr, out before the process leaves."""
    try:
        sys.stdout.flush()
    except Exception:   # noqa: BLE001  (a closed stdout must not keep the process alive)
        pass
    try:
        sys.stderr.write(f"mxbn: {message}\n")
        sys.stderr.flush()
    except Exception:   # noqa: BLE001
        pass


def _leave(message, exit=os._exit):
    _say(message + f"; exiting with code {LOST_PEER_EXIT}. Restart the whole job (every host) with --resume "
                   "to continue from the last checkpoint")
    exit(LOST_PEER_EXIT)


def _send(sock, lock, message):
    data = (json.dumps(message) + "\n").encode()
    with lock:
        sock.sendall(data)


def _lines(sock):
    """The messages read from ``sock`` until it closes (a reset counts as closed)."""
    buffer = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionError, OSError):
            return
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                yield json.loads(line)
            except ValueError:
                continue


class _Peer:
    """The scheduler's record of one member."""

    def __init__(self, sock, address):
        self.sock, self.address, self.lock = sock, address, threading.Lock()
        self.role, self.rank, self.pid, self.done = "process", None, None, False
        self.heard = time.monotonic()

    def describe(self):
        who = self.role if self.rank is None else f"{self.role} {self.rank}"
        return f"{who} on host {self.address[0]} (pid {self.pid})"


class RollCall:
    """The scheduler's side: accepts the members, watches them, and stops the job when one is lost."""

    def __init__(self, settings, leave=_leave, clock=time.monotonic):
        self.settings, self.leave, self.clock = settings, leave, clock
        self.peers, self.lock, self.finished = [], threading.Lock(), False
        try:
            self.listener = socket.create_server(("", settings.port))
        except OSError as e:
            raise OSError(f"mxbn's roll call cannot listen on port {settings.port} ({e.strerror}); set "
                          "MXBN_LIVENESS_PORT to a free port, the same on every process of the job") from None

    def start(self):
        for target in (self._accept, self._watch):
            threading.Thread(target=target, daemon=True, name=f"mxbn-rollcall-{target.__name__}").start()
        return self

    def finish(self):
        """The scheduler's own work is over: members leaving from now on is the normal end."""
        self.finished = True

    def lost(self, peer, how):
        """``peer`` is gone: every other member is told, and this process leaves."""
        with self.lock:
            if self.finished:
                return
            self.finished = True
            others = [p for p in self.peers if p is not peer]
        message = f"lost {peer.describe()}: {how}"
        for other in others:
            try:
                _send(other.sock, other.lock, dict(lost=message))
            except OSError:
                pass
        self.leave(f"stopping the job: {message}")

    def _accept(self):
        while True:
            try:
                sock, address = self.listener.accept()
            except OSError:   # the listener was closed
                return
            peer = _Peer(sock, address)
            with self.lock:
                self.peers.append(peer)
            threading.Thread(target=self._read, args=(peer,), daemon=True).start()

    def _read(self, peer):
        for message in _lines(peer.sock):
            peer.heard = self.clock()
            peer.role = message.get("role", peer.role)
            peer.rank = message.get("rank", peer.rank)
            peer.pid = message.get("pid", peer.pid)
            peer.done = peer.done or bool(message.get("done"))
        if not peer.done:
            self.lost(peer, "its connection closed before it finished, so the process ended (killed or crashed)")

    def _watch(self):
        interval = self.settings.interval
        while not self.finished:
            time.sleep(interval)
            with self.lock:
                peers = list(self.peers)
            for peer in peers:
                try:   # a finished member too: it may still wait in MXNet's shutdown and watch for us
                    _send(peer.sock, peer.lock, dict(beat=True))
                except OSError:
                    pass   # its reader sees the connection close
                if peer.done:
                    continue
                silent = self.clock() - peer.heard
                if silent > self.settings.timeout:
                    self.lost(peer, f"nothing heard from it for {silent:.0f} s (its host or its network is down)")
                    return


class Member:
    """A server's or worker's side: heartbeats to the scheduler, and leaving when the job is lost."""

    def __init__(self, settings, role, leave=_leave, clock=time.monotonic, connect_timeout=None):
        self.settings, self.role, self.leave, self.clock = settings, role, leave, clock
        self.where = f"the scheduler's roll call at {settings.host}:{settings.port}"
        self.sock = self._connect(connect_timeout if connect_timeout is not None else settings.timeout * 6)
        self.lock, self.heard, self.closing = threading.Lock(), clock(), False
        _send(self.sock, self.lock, dict(role=role, pid=os.getpid()))

    def _connect(self, timeout):
        """Connect, retrying while the scheduler starts (hosts are started by hand, in any order)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return socket.create_connection((self.settings.host, self.settings.port),
                                                timeout=self.settings.interval)
            except OSError as e:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"cannot reach {self.where} ({e}) within {timeout:g} s: is the scheduler running (started "
                        f"with `import mxbn`), and is port {self.settings.port} open? (MXBN_LIVENESS=0 on every "
                        "process of the job runs it without the roll call)") from None
                time.sleep(min(1.0, self.settings.interval))

    def start(self):
        self.sock.settimeout(None)
        for target in (self._read, self._beat):
            threading.Thread(target=target, daemon=True, name=f"mxbn-liveness-{target.__name__}").start()
        atexit.register(self.close)
        return self

    def tell(self, **facts):
        """Tell the scheduler more about this process (a worker's rank once the kvstore has given it)."""
        try:
            _send(self.sock, self.lock, facts)
        except OSError:
            pass

    def finish(self):
        """This process finished its part: its leaving is not a loss."""
        self.tell(done=True)

    def close(self):
        """This process is ending: say so by closing the connection (after ``finish``, not a loss)."""
        self.closing = True
        for end in (lambda: self.sock.shutdown(socket.SHUT_RDWR), self.sock.close):
            try:
                end()
            except OSError:
                pass

    def _read(self):
        for message in _lines(self.sock):
            self.heard = self.clock()
            if "lost" in message and not self.closing:
                self.leave(f"stopping: the scheduler reports that it {message['lost']}")
        if not self.closing:
            self.leave(f"lost {self.where}: the connection closed, so the scheduler process ended "
                       "(killed or crashed)")

    def _beat(self):
        while not self.closing:
            time.sleep(self.settings.interval)
            try:
                _send(self.sock, self.lock, dict(beat=True))
            except OSError:
                pass
            silent = self.clock() - self.heard
            if silent > self.settings.timeout and not self.closing:
                self.leave(f"lost {self.where}: nothing heard from it for {silent:.0f} s (this host's network "
                           "or the scheduler's host is down)")
                return


def start_for_role(role, environ=os.environ):
    """The roll call of a process of a ``dist_*`` job (RollCall for the scheduler, Member otherwise), started;
    None when it is off."""
    settings = settings_from_env(environ)
    if settings is None:
        return None
    if role == "scheduler":
        return RollCall(settings).start()
    return Member(settings, role).start()
