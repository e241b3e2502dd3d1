import mxnet as mx
import pytest

from mxbn.context import ContextError, parse_context, probe_context, resolve_context


def collect():
    seen = []
    return seen, seen.append


def test_cpu_and_parse():
    assert resolve_context("cpu") == mx.cpu()
    assert resolve_context("cpu:1") == mx.cpu(1)
    assert parse_context("GPU:2") == ("gpu", 2)
    with pytest.raises(ContextError, match="--ctx must be cpu, gpu, cpu:N or gpu:N, got 'tpu'"):
        parse_context("tpu")


def test_gpu_falls_back_with_one_warning_when_there_is_none():
    seen, warn = collect()
    assert resolve_context("gpu", warn=warn, num_gpus=lambda: 0) == mx.cpu()
    assert len(seen) == 1 and "training on the CPU" in seen[0]


def test_gpu_that_cannot_run_kernels_falls_back_with_the_reason():
    seen, warn = collect()
    ctx = resolve_context("gpu", warn=warn, num_gpus=lambda: 1,
                          probe=lambda c: "a test kernel failed on gpu(0): no kernel image is available")
    assert ctx == mx.cpu()
    assert "no kernel image" in seen[0] and "Hopper" in seen[0]


def test_gpu_that_works_is_used():
    assert resolve_context("gpu", num_gpus=lambda: 2, probe=lambda c: None) == mx.gpu(0)
    assert resolve_context("gpu:1", num_gpus=lambda: 2, probe=lambda c: None) == mx.gpu(1)


def test_explicit_gpu_that_does_not_exist_or_fails_is_an_error():
    with pytest.raises(ContextError, match=r"--ctx gpu:7: this machine has 0 GPU\(s\)"):
        resolve_context("gpu:7", num_gpus=lambda: 0)
    with pytest.raises(ContextError, match="no kernel image"):
        resolve_context("gpu:0", num_gpus=lambda: 1, probe=lambda c: "no kernel image is available")


def test_real_probe_passes_on_cpu_and_real_resolution_never_crashes():
    assert probe_context(mx.cpu()) is None
    seen, warn = collect()
    ctx = resolve_context("gpu", warn=warn)
    assert ctx.device_type in ("cpu", "gpu")
    if ctx.device_type == "cpu":
        assert len(seen) == 1
