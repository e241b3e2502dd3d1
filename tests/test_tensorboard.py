"""train_cnn.py --tensorboard: the event file read back (scalars per epoch, histograms, images, the config),
and a clear error without the extra."""
import collections
import glob
import os
import struct
import sys

import pytest

from mxbn.config import ConfigError, TrainConfig
from mxbn.run import train_cnn


try:
    import tensorboardX  # noqa: F401
    HAVE_TENSORBOARDX = True
except ImportError:
    HAVE_TENSORBOARDX = False


def read_events(folder):
    """{tag: [(step, kind)]} of every event file in ``folder`` (TFRecord: length, its CRC, data, its CRC)."""
    from tensorboardX.proto import event_pb2
    tags = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                tags[value.tag].append((event.step, value.WhichOneof("value")))
    return tags


@pytest.mark.skipif(not HAVE_TENSORBOARDX, reason="the tensorboard extra is not installed (.[tensorboard])")
def test_the_event_file_holds_the_run(tiny_data, tmp_path):
    log_dir = str(tmp_path / "tb")
    cfg = TrainConfig(ctx="cpu", data_dir=tiny_data, epochs=3, batch_size=64, seed=0, tensorboard=log_dir,
                      trace_bn=True, clip_grad_norm=5.0)
    train_cnn(cfg, str(tmp_path / "run"), log=lambda *_: None, progress=False)
    tags = read_events(log_dir)
    for split in ("train", "validation", "test"):
        for metric in ("loss", "accuracy"):
            assert tags[f"{metric}/{split}"] == [(1, "simple_value"), (2, "simple_value"), (3, "simple_value")]
    for tag in ("lr", "images_per_sec", "clipped"):
        assert [step for step, _ in tags[tag]] == [1, 2, 3]
    assert tags["bn/bn1/input"] == [(1, "histo"), (2, "histo"), (3, "histo")] and len(tags["bn/bn2/input"]) == 3
    assert tags["confusion"] == [(3, "image")] and tags["predictions"] == [(3, "image")]
    assert len(tags["config/text_summary"]) == 1
    assert len(tags["bn_trace/bn1/before_p50"]) > 3   # every recorded training step


def test_without_tensorboardx_the_option_names_the_extra(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    cfg = TrainConfig(ctx="cpu", data_dir=tiny_data, epochs=1, batch_size=64, tensorboard=str(tmp_path / "tb"))
    with pytest.raises(ConfigError, match=r"--tensorboard needs tensorboardX: pip install -e \".\[tensorboard\]\""):
        train_cnn(cfg, str(tmp_path / "run"), log=lambda *_: None, progress=False)
    assert not os.path.exists(tmp_path / "run")
