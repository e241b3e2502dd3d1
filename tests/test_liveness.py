"""The roll call of a distributed job (mxbn.liveness), in one process: who is lost, how it is told.

The processes of a real job on several hosts are in tests/test_multihost.py (-m multihost)."""
import socket
import threading
import time

import pytest

from mxbn import liveness
from mxbn.parallel.launch import free_port as _free_port


class Left:
    """A ``leave`` that records the message instead of ending the process."""

    def __init__(self):
        self.messages, self.event = [], threading.Event()

    def __call__(self, message):
        self.messages.append(message)
        self.event.set()


def _job(interval=0.1, timeout=0.6):
    settings = liveness.Settings("127.0.0.1", _free_port(), interval=interval, timeout=timeout)
    scheduler_left = Left()
    roll_call = liveness.RollCall(settings, leave=scheduler_left).start()
    return settings, roll_call, scheduler_left


def _member(settings, role, rank=None):
    left = Left()
    member = liveness.Member(settings, role, leave=left).start()
    if rank is not None:
        member.tell(rank=rank)
    return member, left


def test_a_member_that_ends_before_finishing_is_reported_to_the_others_by_role_rank_and_host():
    settings, _, scheduler_left = _job()
    server, server_left = _member(settings, "server")
    worker0, worker0_left = _member(settings, "worker", rank=0)
    worker1, _ = _member(settings, "worker", rank=1)
    time.sleep(0.3)
    worker1.sock.close()     # as the kernel does for a killed process: the connection closes, no "done"
    assert scheduler_left.event.wait(5) and worker0_left.event.wait(5) and server_left.event.wait(5)
    expected = "lost worker 1 on host 127.0.0.1 (pid "
    assert expected in scheduler_left.messages[0] and "its connection closed before it finished" in \
        scheduler_left.messages[0]
    assert expected in worker0_left.messages[0] and expected in server_left.messages[0]
    for member in (server, worker0):
        member.close()


def test_a_silent_member_is_lost_after_the_timeout_and_a_finished_one_is_not():
    settings, _, scheduler_left = _job(interval=0.1, timeout=0.6)
    done, done_left = _member(settings, "worker", rank=0)
    quiet, _ = _member(settings, "worker", rank=1)
    done.finish()
    done.close()                         # a normal end: no loss
    quiet.closing = True                 # its heartbeats stop, its connection stays open: a partition
    t0 = time.monotonic()
    assert scheduler_left.event.wait(5)
    assert 0.5 <= time.monotonic() - t0 < 3
    assert "lost worker 1 on host 127.0.0.1" in scheduler_left.messages[0]
    assert "nothing heard from it for" in scheduler_left.messages[0]
    assert done_left.messages == []


def test_members_leave_when_the_scheduler_ends_or_goes_silent():
    settings, roll_call, _ = _job()
    member, left = _member(settings, "server")
    roll_call.listener.close()
    for peer in roll_call.peers:
        peer.sock.close()                # the scheduler process ended
    assert left.event.wait(5)
    assert left.messages[0].startswith(f"lost the scheduler's roll call at 127.0.0.1:{settings.port}: the "
                                       "connection closed")

    settings, roll_call, _ = _job(interval=0.1, timeout=0.6)
    roll_call.finished = True            # its heartbeats stop
    member, left = _member(settings, "worker")
    assert left.event.wait(5)
    assert "nothing heard from it for" in left.messages[0]


def test_after_the_scheduler_finished_members_may_leave():
    settings, roll_call, scheduler_left = _job()
    member, _ = _member(settings, "server")
    time.sleep(0.2)
    roll_call.finish()
    member.sock.close()
    time.sleep(0.5)
    assert scheduler_left.messages == []


def test_settings_from_the_environment_and_their_errors():
    assert liveness.settings_from_env({}) is None
    base = dict(DMLC_PS_ROOT_URI="10.0.0.1", DMLC_PS_ROOT_PORT="9091", DMLC_NUM_WORKER="2", DMLC_NUM_SERVER="1")
    s = liveness.settings_from_env(base)
    assert (s.host, s.port, s.interval, s.timeout) == ("10.0.0.1", 9092, 1.0, 10.0)
    assert liveness.settings_from_env(dict(base, MXBN_LIVENESS="0")) is None
    assert liveness.settings_from_env(dict(base, MXBN_LIVENESS_PORT="7000")).port == 7000
    with pytest.raises(ValueError, match="MXBN_LIVENESS_TIMEOUT must be a number, got 'soon'"):
        liveness.settings_from_env(dict(base, MXBN_LIVENESS_TIMEOUT="soon"))
    with pytest.raises(ValueError, match=r"MXBN_LIVENESS_TIMEOUT \(1.0\) must exceed twice MXBN_LIVENESS_INTERVAL"):
        liveness.settings_from_env(dict(base, MXBN_LIVENESS_TIMEOUT="1", MXBN_LIVENESS_INTERVAL="1"))


def test_a_worker_that_cannot_reach_the_roll_call_says_where_it_looked():
    settings = liveness.Settings("127.0.0.1", _free_port(), interval=0.1, timeout=0.5)
    with pytest.raises(ConnectionError, match=rf"cannot reach the scheduler's roll call at 127.0.0.1:{settings.port}"
                                              r".*is the scheduler running .*, and is port \d+ open\?"):
        liveness.Member(settings, "worker", connect_timeout=0.3)


def test_a_roll_call_port_in_use_is_named_with_the_way_out():
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        settings = liveness.Settings("127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError, match=rf"cannot listen on port {settings.port} .*set MXBN_LIVENESS_PORT"):
            liveness.RollCall(settings)


def test_a_finished_member_still_hears_the_scheduler():
    # a worker that has finished may wait in MXNet's shutdown for the others: it must not take the
    # scheduler's silence towards it for a loss
    settings, _, _ = _job(interval=0.1, timeout=0.6)
    member, left = _member(settings, "worker", rank=0)
    member.finish()
    time.sleep(1.5)
    assert left.messages == []
    member.close()
