"""import mxbn prepares any supported numpy for MXNet 1.9.1 (mxbn/_runtime.py).

The names MXNet reads are derived here from the installed mxnet's source, so
the list in _runtime cannot go stale: every attribute read on a module imported
as numpy (``np.X``, ``onp.X``, ``_np.X``) and every name in the lists that
mxnet.numpy_dispatch_protocol resolves with getattr.
"""
import ast
import importlib.util
import json
import pathlib
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from mxbn import _runtime


def names_mxnet_reads_from_numpy():
    """Top-level numpy names the installed mxnet reads, from its source (nothing is imported)."""
    spec = importlib.util.find_spec("mxnet")
    root = pathlib.Path(spec.origin).parent
    names = set()
    for path in root.rglob("*.py"):
        with warnings.catch_warnings():  # mxnet's own invalid escapes in docstrings
            warnings.simplefilter("ignore", SyntaxWarning)       # Python 3.12+
            warnings.simplefilter("ignore", DeprecationWarning)  # the same warning before 3.12
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        aliases = {alias.asname or "numpy" for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names if alias.name == "numpy"}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                names.add(node.attr)
            if (path.name == "numpy_dispatch_protocol.py" and isinstance(node, ast.Assign)
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id.endswith("_LIST")):
                names.update(name.split(".")[0] for name in ast.literal_eval(node.value))
    return names


def run_python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_every_numpy_name_mxnet_reads_is_there_and_only_missing_ones_were_restored():
    read = names_mxnet_reads_from_numpy()
    assert {"PZERO", "alltrue", "compat", "sometrue"} <= read  # the scan sees what it must
    # nothing restored that mxnet does not read
    assert set(_runtime._REMOVED_NUMPY_NAMES) <= read, set(_runtime._REMOVED_NUMPY_NAMES) - read
    # in a fresh interpreter: which names does this numpy lack before mxbn, and after?
    out = run_python(f"""
        import json, warnings
        import numpy as np
        read = {sorted(read)!r}
        lacking = [n for n in read if n not in vars(np)]
        import mxbn
        from mxbn import _runtime
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # a deprecation shim does not count as present
            missing_after = [n for n in read if not hasattr(np, n)]
        print(json.dumps(dict(lacking=lacking, restored=_runtime.RESTORED_NUMPY_NAMES,
                              missing_after=missing_after)))
    """)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["missing_after"] == [], f"numpy {np.__version__} still lacks what mxnet reads"
    # only what this numpy lacked was set: nothing numpy still has is replaced
    assert set(result["restored"]) <= set(result["lacking"])
    assert set(result["restored"]) == set(result["lacking"]) & set(_runtime._REMOVED_NUMPY_NAMES)


def test_restored_names_keep_their_old_meaning():
    module = type(sys)("fake_numpy_without_removed_names")
    restored = _runtime.restore_numpy_names(module)
    assert set(restored) == set(_runtime._REMOVED_NUMPY_NAMES)
    assert module.int is int and module.bool is bool and module.PZERO == 0.0
    assert np.copysign(1.0, module.NZERO) == -1.0 and np.isnan(module.NaN) and module.NINF == -np.inf
    assert module.alltrue([True, True]) and not module.sometrue([False, False])
    assert module.in1d(np.array([[1, 5], [2, 7]]), [2, 5]).tolist() == [False, True, True, False]
    assert module.msort(np.array([[3, 1], [1, 2]])).tolist() == [[1, 1], [3, 2]]
    if hasattr(np, "trapezoid"):  # numpy 2; numpy 1 has trapz itself, so it is never restored there
        assert module.trapz([1.0, 2.0, 3.0]) == 4.0
    assert module.compat.basestring is str
    with pytest.raises(NotImplementedError, match="numpy-financial"):
        module.npv(0.1, [1.0, 2.0])


def test_mxnet_runs_on_this_numpy_through_mxbn():
    out = run_python("""
        import mxbn
        import mxnet as mx
        from mxnet import autograd, gluon, nd
        x = nd.array([[1.0, 2.0], [3.0, 5.0]])
        y = mxbn.batch_norm(x, nd.ones(2), nd.zeros(2), True, nd.zeros(2), nd.ones(2))
        a = mx.np.array([[1.0, 2.0], [3.0, 4.0]])
        net = gluon.nn.HybridSequential()
        net.add(gluon.nn.Dense(3), gluon.nn.BatchNorm())
        net.initialize()
        net.hybridize()
        with autograd.record():
            out = net(x)
        out.backward()
        print("ok", y.asnumpy().round(3).tolist(), float((a * 2).sum()), out.shape,
              mx.np.pad(a, ((1, 1), (1, 1))).shape)
    """)
    assert out.returncode == 0, out.stderr
    assert "ok [[-1.0, -1.0], [1.0, 1.0]] 20.0 (2, 3) (4, 4)" in out.stdout


def test_import_restores_numpy_aliases_removed_in_1_24():
    # Emulate NumPy >= 1.24 in a fresh interpreter: the aliases raise AttributeError
    # (exactly what 1.24's module __getattr__ does), then import mxbn and run an
    # MXNet call that reads np.bool internally.
    if np.lib.NumpyVersion(np.__version__) >= "1.24.0":
        pytest.skip(f"numpy {np.__version__} lacks the aliases for real: the test above covers it")
    out = run_python("""
        import numpy as np
        removed = ("bool", "int")
        for name in removed:
            np.__dict__.pop(name, None)
        old_getattr = np.__getattr__
        def getattr_1_24(attr):
            if attr in removed:
                raise AttributeError(f"module 'numpy' has no attribute '{attr}'")
            return old_getattr(attr)
        np.__getattr__ = getattr_1_24
        try:
            np.bool
        except AttributeError:
            pass
        else:
            raise SystemExit("emulation failed: np.bool still resolves")
        import mxbn
        from mxnet import nd
        assert np.bool is bool and np.int is int
        x = nd.array([[1.0, 2.0], [3.0, 4.0]])
        y = mxbn.batch_norm(x, nd.ones(2), nd.zeros(2), True, nd.zeros(2), nd.ones(2))
        mask = nd.array([1, 0]).asnumpy().astype(np.bool)
        print("ok", y.shape, mask.dtype)
    """)
    assert out.returncode == 0, out.stderr
    assert "ok (2, 2) bool" in out.stdout


def test_a_failed_mxnet_import_before_mxbn_says_to_import_mxbn_first():
    # What `import mxnet` leaves behind when it fails on a numpy that lacks its
    # names: half-initialized submodules, and no "mxnet".
    out = run_python("""
        import sys, types
        sys.modules["mxnet.base"] = types.ModuleType("mxnet.base")
        try:
            import mxbn
        except ImportError as e:
            print(e)
    """)
    assert "restart Python and `import mxbn` before `import mxnet`" in out.stdout, out.stderr


def test_the_real_failed_import_order_on_a_numpy_mxnet_cannot_import_alone():
    if np.lib.NumpyVersion(np.__version__) < "1.24.0":
        pytest.skip(f"mxnet imports on numpy {np.__version__} without mxbn")
    out = run_python("""
        try:
            import mxnet
        except Exception as e:
            print("mxnet alone:", type(e).__name__)
        try:
            import mxbn
        except ImportError as e:
            print(e)
    """)
    assert "mxnet alone:" in out.stdout and "`import mxbn` before `import mxnet`" in out.stdout, out.stderr


def test_missing_system_libraries_name_the_package():
    def load(name):
        if name == "libgomp.so.1":
            raise OSError(f"{name}: cannot open shared object file")
    with pytest.raises(ImportError, match=r"needs libgomp.so.1.*apt-get install libgomp1`"):
        _runtime.check_system_libraries(load=load)
    _runtime.check_system_libraries(load=lambda name: None)  # all present: nothing raised


def test_missing_distutils_names_setuptools():
    out = run_python("""
        import sys
        sys.modules["distutils"] = None      # as on Python 3.12+ ...
        sys.modules["setuptools"] = None     # ... without setuptools
        try:
            import mxbn
        except ImportError as e:
            print(e)
    """)
    assert "install setuptools" in out.stdout, out.stderr


def test_a_failed_opencv_import_inside_mxnet_leaves_sys_path_as_it_was(tmp_path):
    # MXNet imports cv2 if it can.  opencv-python puts its package directory on sys.path while it
    # loads and leaves it there when its native library fails (a minimal Debian without libxcb).
    # That directory holds a package named `typing`, which then shadowed the standard library's in
    # every spawned process (they copy sys.path): on Python 3.13 each worker died at start.
    cv2 = tmp_path / "cv2"
    (cv2 / "typing").mkdir(parents=True)
    (cv2 / "typing" / "__init__.py").write_text("raise ImportError('the shadowing cv2/typing')\n")
    (cv2 / "__init__.py").write_text(
        "import os, sys\n"
        "sys.path.insert(0, os.path.dirname(__file__))\n"
        "raise ImportError('libxcb.so.1: cannot open shared object file')\n")
    out = run_python(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        before = list(sys.path)
        import mxbn
        import mxnet
        print("cv2 tried:", "cv2" in sys.modules or any(k.startswith("mxnet.image") for k in sys.modules))
        print("added:", [p for p in sys.path if p not in before and p.startswith({str(tmp_path)!r})])
    """)
    assert "added: []" in out.stdout, (out.stdout, out.stderr)
