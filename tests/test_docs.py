"""The runnable examples of the docs run as written."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_write_your_own_net_example_runs():
    text = (ROOT / "docs" / "write_your_own_net.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/write_your_own_net.md has no python example"
    out = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^loss \d+\.\d+$", out.stdout, re.M)
