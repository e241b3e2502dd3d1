"""import mxbn works where NumPy has dropped the aliases mxnet 1.9.1 reads."""
import subprocess
import sys
import textwrap


def test_import_restores_numpy_aliases_removed_in_1_24():
    # Emulate NumPy >= 1.24 in a fresh interpreter: the aliases raise AttributeError
    # (exactly what 1.24's module __getattr__ does), then import mxbn and run an
    # MXNet call that reads np.bool internally.
    code = textwrap.dedent("""
        import numpy as np
        removed = ("bool", "int", "float", "complex", "object", "str")
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
        assert np.bool is bool and np.int is int and np.float is float
        x = nd.array([[1.0, 2.0], [3.0, 4.0]])
        y = mxbn.batch_norm(x, nd.ones(2), nd.zeros(2), True, nd.zeros(2), nd.ones(2))
        mask = nd.array([1, 0]).asnumpy().astype(np.bool)
        print("ok", y.shape, mask.dtype)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ok (2, 2) bool" in out.stdout


def test_numpy_2_is_refused_with_an_explanation():
    code = textwrap.dedent("""
        import numpy as np
        np.__version__ = "2.1.0"
        try:
            import mxbn
        except ImportError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "mxbn needs numpy<2" in out.stdout and "requirements.txt" in out.stdout
