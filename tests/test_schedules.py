"""LR schedules come from gluoncv, also where PyTorch 2 makes `import gluoncv` raise."""
import subprocess
import sys
import textwrap

import pytest

from mxbn.config import TrainConfig
from mxbn.run import make_lr_schedule


def test_constant_is_none_and_cosine_with_warmup():
    assert make_lr_schedule(TrainConfig(epochs=3), 10) is None
    sched = make_lr_schedule(TrainConfig(epochs=4, lr=0.1, lr_schedule="cosine", warmup_epochs=1), 10)
    lrs = [sched(i) for i in range(40)]
    assert lrs[0] == 0.0 and lrs[9] == pytest.approx(0.1)       # linear warm-up over epoch 1
    assert lrs[10] == pytest.approx(0.1) and lrs[39] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))      # cosine decays monotonically


def test_step_schedule():
    sched = make_lr_schedule(TrainConfig(epochs=4, lr=0.1, lr_schedule="step", lr_step_epochs=(2, 3)), 5)
    assert [sched(i) for i in (0, 9, 10, 14, 15)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_schedules_load_when_torch_2_blocks_gluoncv_import():
    code = textwrap.dedent("""
        import sys, types
        import mxbn                             # first, as documented: it prepares numpy for mxnet
        fake = types.ModuleType("torch"); fake.__version__ = "2.13.0"
        sys.modules["torch"] = fake            # gluoncv refuses torch>=2.0 at import time
        try:
            import gluoncv
        except RuntimeError as e:
            assert "torch" in str(e)
        else:
            raise SystemExit("gluoncv imported: the emulation did not trigger its torch check")
        from mxbn.schedules import LRScheduler
        s = LRScheduler("cosine", base_lr=1.0, target_lr=0.0, niters=11)
        print("lr", s(0), s(5), s(10))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "lr 1.0 0.5 0.0" in out.stdout
