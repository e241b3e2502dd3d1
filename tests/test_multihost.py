"""A dist_sync job across hosts: network namespaces, one per host, joined by a bridge.

Each test makes its own namespaces (a hub holding the bridge, and the hosts: ``ps`` runs the scheduler
and the server, ``w0`` and ``w1`` one worker each), with private addresses that exist only inside them,
and removes them afterwards, also when it fails.  Every process is started in its host's namespace as
README's 'Several machines' tells a user to start it on a real machine, by hand, with no launcher.

Run with ``pytest -m multihost`` (root and iproute2); skipped otherwise, with the reason.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import make_idx_dataset

pytestmark = pytest.mark.multihost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET = "10.231.77"
ADDRESSES = {"ps": f"{SUBNET}.10", "w0": f"{SUBNET}.11", "w1": f"{SUBNET}.12"}
PS_PORT = 9091
TIMEOUT = 5          # MXBN_LIVENESS_TIMEOUT in these tests (the default is 10 s)
EPOCHS = 3
TRAIN = ["--epochs", str(EPOCHS), "--batch-size", "32", "--val-size", "0", "--lr", "0.2", "--seed", "3",
         "--no-progress"]


def _why_no_namespaces():
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip` command"
    probe = f"mxbn-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Hosts:
    """The namespaces of one test, and the processes started in them."""

    def __init__(self, tag):
        self.names = {host: f"mxbn-{tag}-{host}" for host in ["hub", *ADDRESSES]}
        self.procs = []

    def make(self):
        hub = self.names["hub"]
        for name in self.names.values():
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            _ip("link", "set", "lo", "up", ns=name)
        _ip("link", "add", "br0", "type", "bridge", ns=hub)
        _ip("link", "set", "br0", "up", ns=hub)
        for host, address in ADDRESSES.items():
            # a veth pair: eth0 in the host, p-<host> on the hub's bridge
            _ip("link", "add", "eth0", "netns", self.names[host], "type", "veth", "peer", "name", f"p-{host}",
                "netns", hub)
            _ip("link", "set", f"p-{host}", "master", "br0", "up", ns=hub)
            _ip("addr", "add", f"{address}/24", "dev", "eth0", ns=self.names[host])
            _ip("link", "set", "eth0", "up", ns=self.names[host])
        return self

    def cut(self, host):
        """The host's network cable pulled: its port on the bridge goes down (a partition, not a crash)."""
        _ip("link", "set", f"p-{host}", "down", ns=self.names["hub"])

    def start(self, host, command, env, log_path):
        """``command`` (a shell line) in ``host``'s namespace, with ``env`` added to this environment."""
        log = open(log_path, "w")
        full = dict(os.environ, **env)
        proc = subprocess.Popen(["ip", "netns", "exec", self.names[host], "bash", "-c", f"exec {command}"],
                                cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = log_path
        self.procs.append(proc)
        return proc

    def left_behind(self):
        """Processes still running in any of the namespaces."""
        pids = []
        for name in self.names.values():
            out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
            pids += [int(p) for p in out.split()]
        return pids

    def remove(self):
        for pid in self.left_behind():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for name in self.names.values():   # the hub last-but-any: deleting a namespace deletes its links
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="module")
def namespaces_possible():
    reason = _why_no_namespaces()
    if reason:
        pytest.skip(reason)


_made = []


@pytest.fixture
def hosts(namespaces_possible):
    _made.append(None)
    made = Hosts(f"{os.getpid()}-{len(_made)}").make()
    yield made
    made.remove()
    assert not any(name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
                   for name in made.names.values())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("multihost-data"), n_train=4096, n_test=256)


def _job_env(extra=None):
    env = dict(DMLC_PS_ROOT_URI=ADDRESSES["ps"], DMLC_PS_ROOT_PORT=str(PS_PORT), DMLC_NUM_WORKER="2",
               DMLC_NUM_SERVER="1", MXBN_LIVENESS_TIMEOUT=str(TIMEOUT), OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


def start_job(hosts, tmp_path, data_dir, out, *extra, tag="run", workers=("w0", "w1")):
    """README's recipe: the scheduler and the server on host ps, a worker on w0 and on w1."""
    env = _job_env(dict(DMLC_NUM_WORKER=str(len(workers))))
    py = sys.executable
    train = " ".join([py, "scripts/train_cnn.py", "--ctx", "cpu", "--kvstore", "dist_sync", "--data-dir",
                      str(data_dir), "--out", str(out), *TRAIN, *extra])
    procs = dict(
        scheduler=hosts.start("ps", f'{py} -c "import mxbn"', dict(env, DMLC_ROLE="scheduler"),
                              tmp_path / f"{tag}-scheduler.log"),
        server=hosts.start("ps", f'{py} -c "import mxbn"', dict(env, DMLC_ROLE="server"),
                           tmp_path / f"{tag}-server.log"),
    )
    for host in workers:
        procs[host] = hosts.start(host, train, dict(env, DMLC_ROLE="worker"), tmp_path / f"{tag}-{host}.log")
    return procs


def wait_all(procs, timeout):
    """{name: exit code} once every process has ended; fails naming those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    codes = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[name] = None
    running = [name for name, code in codes.items() if code is None]
    assert not running, f"still running after {timeout} s: {running}\n" + logs(procs)
    return codes


def logs(procs):
    return "\n".join(f"--- {name}\n{open(p.log_path).read()[-3000:]}" for name, p in procs.items())


def wait_for(path, procs, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear\n" + logs(procs)
        assert all(p.poll() is None for p in procs.values()), "a process ended early\n" + logs(procs)
        time.sleep(0.05)


def epoch_fingerprints(text):
    return re.findall(r"epoch (\d+): parameters sha1 ([0-9a-f]{40}), BN statistics sha1 ([0-9a-f]{40})", text)


def checkpoint_arrays(path):
    import mxbn  # noqa: F401
    from mxnet import nd
    return {k: v.asnumpy() for k, v in nd.load(str(path)).items() if k != "meta"}   # meta holds timings


@pytest.fixture(scope="module")
def one_host_run(data_dir, tmp_path_factory):
    """The same job on one host through scripts/launch_local.py: the reference."""
    out = tmp_path_factory.mktemp("one-host") / "run"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "-n", "2", "--timeout", "300", "--",
           sys.executable, os.path.join(ROOT, "scripts", "train_cnn.py"), "--ctx", "cpu", "--kvstore",
           "dist_sync", "--data-dir", str(data_dir), "--out", str(out), *TRAIN]
    # one OpenMP thread per worker, as on the hosts (the thread count changes the float32 sums)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=360, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stdout + done.stderr


def _assert_same_checkpoint(a, b, rtol=1e-5):
    one, two = checkpoint_arrays(a), checkpoint_arrays(b)
    assert sorted(one) == sorted(two)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=rtol, atol=1e-7, err_msg=name)


def test_two_worker_hosts_train_as_the_same_job_on_one_host(hosts, data_dir, tmp_path, one_host_run):
    out = tmp_path / "run"
    procs = start_job(hosts, tmp_path, data_dir, out)
    codes = wait_all(procs, timeout=300)
    assert codes == dict(scheduler=0, server=0, w0=0, w1=0), logs(procs)
    w0, w1 = (open(procs[w].log_path).read() for w in ("w0", "w1"))
    # identical parameters and BN statistics on both workers after every epoch
    assert [e for e, _, _ in epoch_fingerprints(w0)] == [str(e) for e in range(1, EPOCHS + 1)], w0
    assert epoch_fingerprints(w0) == epoch_fingerprints(w1)
    # the same numbers as the job run on one host by the launcher (rtol 1e-5; in fact the same bits)
    reference, reference_log = one_host_run
    assert sorted(set(epoch_fingerprints(reference_log))) == epoch_fingerprints(w0)
    _assert_same_checkpoint(reference / "checkpoint.params", out / "checkpoint.params")
    assert json.loads((out / "metrics.json").read_text())["workers"] == 2
    assert hosts.left_behind() == []


def _fault(hosts, tmp_path, data_dir, act, victim):
    """Start the job, let it finish epoch 1, ``act()``, and return (exit codes, seconds from the act to the
    last survivor's exit, the processes, the output folder).  ``victim``: a process name, "worker 1" or None."""
    out = tmp_path / "run"
    procs = start_job(hosts, tmp_path, data_dir, out)
    wait_for(out / "checkpoint.params", procs)
    victim = host_of_worker(procs, 1) if victim == "worker 1" else victim
    t0 = time.monotonic()
    act(procs)
    survivors = {name: p for name, p in procs.items() if name != victim}
    codes = wait_all(survivors, timeout=TIMEOUT * 4 + 30)
    seconds = time.monotonic() - t0
    wait_all(procs, timeout=10)
    assert hosts.left_behind() == [], logs(procs)
    return codes, seconds, procs, out


def _kill(name):
    return lambda procs: os.killpg(procs[name].pid, signal.SIGKILL)


def host_of_worker(procs, rank):
    """The host whose worker the kvstore gave ``rank`` (ps-lite numbers the workers as they register)."""
    for host in ("w0", "w1"):
        if re.search(rf"worker {rank} of 2", open(procs[host].log_path).read()):
            return host
    raise AssertionError(f"no worker {rank} in the logs\n" + logs(procs))


def _kill_worker(rank):
    return lambda procs: os.killpg(procs[host_of_worker(procs, rank)].pid, signal.SIGKILL)


LOST = 69


@pytest.mark.parametrize("victim, says", [
    ("worker 1", r"lost worker 1 on host {worker_1} \(pid \d+\): its connection closed before it finished"),
    ("server", rf"lost server on host {ADDRESSES['ps']} \(pid \d+\): its connection closed"),
    ("scheduler", rf"lost the scheduler's roll call at {ADDRESSES['ps']}:{PS_PORT + 1}: the connection closed"),
])
def test_a_killed_process_stops_every_survivor_at_once_with_its_name(hosts, data_dir, tmp_path, victim, says):
    act = _kill_worker(1) if victim == "worker 1" else _kill(victim)
    codes, seconds, procs, _ = _fault(hosts, tmp_path, data_dir, act, victim)
    print(f"{victim} killed: every survivor exited {seconds:.1f} s later")
    assert set(codes.values()) == {LOST}, logs(procs)
    worker_1 = host_of_worker(procs, 1)
    says = says.replace("{worker_1}", ADDRESSES[worker_1])
    workers = [open(procs[w].log_path).read() for w in ("w0", "w1") if w in codes]
    assert workers and all(re.search(says, text) for text in workers), logs(procs)
    assert all("Restart the whole job (every host) with --resume" in text for text in workers)
    assert seconds < 10, logs(procs)   # a closed connection is seen at once


def test_a_worker_cut_off_the_network_is_detected_after_the_timeout(hosts, data_dir, tmp_path):
    codes, seconds, procs, _ = _fault(hosts, tmp_path, data_dir, lambda procs: hosts.cut("w1"), None)
    print(f"w1's network cut: every process exited {seconds:.1f} s later")
    assert set(codes.values()) == {LOST}, logs(procs)
    w0, w1 = (open(procs[w].log_path).read() for w in ("w0", "w1"))
    rank = 1 if host_of_worker(procs, 1) == "w1" else 0
    assert re.search(rf"lost worker {rank} on host {ADDRESSES['w1']} \(pid \d+\): nothing heard from it for \d+ s",
                     w0), logs(procs)
    assert re.search(rf"lost the scheduler's roll call at {ADDRESSES['ps']}:{PS_PORT + 1}: nothing heard", w1)
    assert TIMEOUT <= seconds < TIMEOUT + 10, logs(procs)


def test_after_a_lost_worker_the_whole_job_resumes_to_the_uninterrupted_result(hosts, data_dir, tmp_path,
                                                                            one_host_run):
    codes, _, procs, out = _fault(hosts, tmp_path, data_dir, _kill_worker(1), "worker 1")
    assert set(codes.values()) == {LOST}
    finished = json.loads((out / "metrics.json").read_text())["history"]
    assert 1 <= len(finished) < EPOCHS
    again = start_job(hosts, tmp_path, data_dir, out, "--resume", tag="resumed")
    assert wait_all(again, timeout=300) == dict(scheduler=0, server=0, w0=0, w1=0), logs(again)
    assert f"resuming from {out / 'checkpoint.params'} at epoch {len(finished) + 1}" in open(
        again["w0"].log_path).read()
    reference, _ = one_host_run
    _assert_same_checkpoint(reference / "checkpoint.params", out / "checkpoint.params")


def test_throughput_of_one_and_two_worker_hosts(hosts, data_dir, tmp_path):
    """Images per second of the whole job (every worker's shard), epochs 2 and 3; printed, not judged: the
    hosts here share two cores, so two workers cannot be faster than one."""
    rates = {}
    for workers in (("w0",), ("w0", "w1")):
        procs = start_job(hosts, tmp_path, data_dir, tmp_path / f"run-{len(workers)}", tag=f"x{len(workers)}",
                          workers=workers)
        assert set(wait_all(procs, timeout=300).values()) == {0}, logs(procs)
        per_worker = [[float(r) for r in re.findall(r"epoch [23]/3 .*\((\d+) img/s\)", open(procs[w].log_path).read())]
                      for w in workers]
        assert all(len(r) == 2 for r in per_worker), logs(procs)
        rates[len(workers)] = sum(np.mean(r) for r in per_worker)
    print(f"job throughput: 1 worker host {rates[1]:.0f} img/s, 2 worker hosts {rates[2]:.0f} img/s "
          f"({rates[2] / rates[1]:.2f}x)")
