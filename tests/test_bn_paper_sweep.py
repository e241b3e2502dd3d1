"""bn-paper's sweep: the worker processes its runs go to, the extension of the learning rates, and the claims
judged over the sweep (on synthetic runs, so that each rule is seen to hold and to fail)."""
import os

import numpy as np
import pytest

from mxbn.experiments import bn_paper
from mxbn.experiments.workers import map_runs


def _threads_and_square(task):
    """A worker task: this process's OpenMP setting, and an MXNet result that depends on the task."""
    import mxbn  # noqa: F401  (before mxnet, as every mxbn process)
    from mxnet import nd
    x = nd.arange(task * 1000, (task + 1) * 1000).reshape((10, 100)) / 1000
    return os.environ.get("OMP_NUM_THREADS"), float(nd.dot(x, x.T).sum().asscalar())


def _short_training(seed):
    """A few SGD steps of the sweep's MLP on random data: bytes of the final weights."""
    import mxbn  # noqa: F401
    import mxnet as mx
    from mxnet import nd
    from mxbn.experiments.common import StudyData
    rng = np.random.default_rng(seed)
    X, y = nd.array(rng.random((600, 784))), nd.array(rng.integers(0, 10, 600))
    data = StudyData("random", "generated", (X, y), (X[:200], y[:200]))
    bn_paper.PROBE_SIZE = 200
    run = bn_paper.train_one(data, True, 40, 20, seed, mx.cpu(), lr=0.5, scale=0.1)
    return run["test_acc"], run["bands"].tobytes()


def _fails(task):
    raise ValueError(f"task {task} failed")


def test_runs_go_to_one_thread_workers_in_order_and_this_process_is_left_as_it_was():
    before = os.environ.get("OMP_NUM_THREADS")
    seen = []
    got = map_runs(_threads_and_square, [3, 1, 2, 0], jobs=2, on_result=lambda task, r: seen.append(task))
    assert [threads for threads, _ in got] == ["1"] * 4
    assert seen == [3, 1, 2, 0]
    assert [value for _, value in got] == [_threads_and_square(t)[1] for t in (3, 1, 2, 0)]
    assert os.environ.get("OMP_NUM_THREADS") == before


def test_the_numbers_do_not_depend_on_the_number_of_workers():
    one = map_runs(_short_training, [0, 1], jobs=1)
    two = map_runs(_short_training, [0, 1], jobs=2)
    assert one == two
    assert one[0] != one[1]   # the seeds differ


def test_a_worker_error_is_raised_here_and_jobs_are_checked():
    with pytest.raises(ValueError, match="task 1 failed"):
        map_runs(_fails, [1], jobs=1)
    with pytest.raises(ValueError, match="jobs must be a positive integer, got 0"):
        map_runs(_fails, [1], jobs=0)


def _run(final, reach_step=None, steps=1000, every=100, diverged=False):
    """A synthetic run: the accuracy rises linearly to ``final`` at ``reach_step`` (default: the end)."""
    grid = list(range(0, steps + 1, every))
    reach = reach_step or steps
    return dict(steps=grid, test_acc=[min(1.0, s / reach) * final for s in grid], diverged=diverged,
                bands=np.zeros((len(grid), 3, 2)))


def _results(finals, reach=None):
    """{(dataset, scale, lr, use_bn): three seeds' runs} from {(scale, lr, use_bn): final accuracy}."""
    reach = reach or {}
    return {("d",) + key: [_run(f + 0.001 * seed, reach.get(key)) for seed in range(3)] for key, f in finals.items()}


def test_the_learning_rate_grows_until_the_net_without_bn_fails_in_every_seed():
    finals = {(0.1, 8.0, True): 0.9, (0.1, 8.0, False): 0.8, (0.01, 8.0, True): 0.9, (0.01, 8.0, False): 0.1}
    results = _results(finals)
    assert bn_paper.next_learning_rates(results, "d", (0.1, 0.01), 128.0) == [(0.1, 32.0)]
    assert bn_paper.next_learning_rates(results, "d", (0.1, 0.01), 16.0) == []       # the cap
    results["d", 0.1, 8.0, False][1] = _run(0.05)                                    # one seed fails
    assert bn_paper.next_learning_rates(results, "d", (0.1, 0.01), 128.0) == [(0.1, 32.0)]
    results["d", 0.1, 8.0, False] = [_run(0.0, diverged=True)] * 3                   # every seed fails
    assert bn_paper.next_learning_rates(results, "d", (0.1, 0.01), 128.0) == []


def _claims(finals, reach=None):
    results = _results(finals, reach)
    settings = sorted({(s, lr) for (_, s, lr, _) in results}, key=lambda sl: (-sl[0], sl[1]))
    comparisons = {sl: bn_paper.compare_setting(results[("d",) + sl + (True,)], results[("d",) + sl + (False,)],
                                                1000) for sl in settings}
    return {c["claim"].split(":")[0]: c for c in bn_paper._overall_claims(results, "d", 1000, settings, comparisons)}


def test_bn_higher_sooner_and_at_higher_learning_rates_is_reproduced():
    finals = {(0.1, 0.5, True): 0.95, (0.1, 0.5, False): 0.90, (0.1, 8.0, True): 0.93, (0.1, 8.0, False): 0.1}
    reach = {(0.1, 0.5, True): 300, (0.1, 8.0, True): 300}
    claims = _claims(finals, reach)
    assert {name: c["verdict"] for name, c in claims.items()} == {
        "BN reaches a higher test accuracy": "reproduced", "BN reaches it sooner": "reproduced",
        "with BN the test accuracy is higher and reached sooner, setting by setting": "reproduced",
        "BN makes higher learning rates usable": "reproduced"}
    assert "BN 0.951 ± 0.001 (0.950–0.952) at 0.1/0.5" in claims["BN reaches a higher test accuracy"]["reason"]
    assert "scale 0.1: BN 8 (the largest swept), no BN 0.5" in claims["BN makes higher learning rates usable"]["reason"]


def test_the_fair_comparison_is_best_against_best():
    """BN ahead at the shared setting, but the net without BN is better at its own best learning rate."""
    finals = {(0.1, 0.5, True): 0.92, (0.1, 0.5, False): 0.90, (0.1, 2.0, True): 0.91, (0.1, 2.0, False): 0.94}
    claims = _claims(finals)
    assert claims["BN reaches a higher test accuracy"]["verdict"] == "not reproduced"
    assert "no BN 0.941 ± 0.001 (0.940–0.942) at 0.1/2" in claims["BN reaches a higher test accuracy"]["reason"]
    assert claims["with BN the test accuracy is higher and reached sooner, setting by setting"]["verdict"] == "partly"
    assert claims["BN makes higher learning rates usable"]["verdict"] == "not reproduced"


def test_a_setting_where_bn_is_behind_in_one_seed_is_not_reproduced():
    bn, no_bn = [_run(0.95), _run(0.95), _run(0.85)], [_run(0.90)] * 3
    c = bn_paper.compare_setting(bn, no_bn, 1000)
    assert c["verdict"] == "not reproduced"
    assert c["no_bn_reached"] == [None] * 3   # BN's mean final 0.917 is never reached without BN


CTRL_C_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import mxbn
from mxbn.experiments.workers import map_runs
from test_bn_paper_sweep import _sleep
try:
    map_runs(_sleep, [30, 30], jobs=2)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def _sleep(seconds):
    import time
    time.sleep(seconds)


def test_ctrl_c_stops_the_workers_with_no_traceback_from_them():
    """Ctrl-C reaches the whole process group: the workers leave it to this process, which stops them."""
    import signal
    import subprocess
    import sys
    import time
    child = subprocess.Popen([sys.executable, "-c", CTRL_C_CHILD.format(tests=os.path.dirname(__file__))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(8)                                  # the workers have started their tasks
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130 and out.strip() == "interrupted", (out, err)
    assert "Traceback" not in err, err


DEAD_WORKER_CHILD = """
import os, sys
import mxbn
from mxbn.experiments.workers import map_runs
try:
    map_runs(os._exit, [3], jobs=1)      # the worker process ends in the middle of its task
except RuntimeError as e:
    print(e)
"""


def test_a_worker_that_dies_is_an_error_here_not_a_hang():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", DEAD_WORKER_CHILD], capture_output=True, text=True, timeout=120)
    assert "a worker process ended" in out.stdout, (out.stdout, out.stderr)
