"""Peak resident memory of this process (standard library only: the PyTorch child imports it too)."""
import resource


def peak_rss_mb():
    """Peak resident memory of this process in MiB.

    /proc's VmHWM belongs to this program alone; ru_maxrss would carry over the
    parent's peak through fork+exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
