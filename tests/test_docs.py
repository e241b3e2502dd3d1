"""The runnable examples of the docs run as written."""
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_write_your_own_net_example_runs():
    text = (ROOT / "docs" / "write_your_own_net.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/write_your_own_net.md has no python example"
    out = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^loss \d+\.\d+$", out.stdout, re.M)


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_every_python_block_of_the_readme_and_docs_runs_as_written():
    """Each file's python blocks, in order, as one program (a later block may use an earlier one's names)."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    ran = []
    for path in files:
        blocks = _python_blocks(path)
        if not blocks:
            continue
        out = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
        assert out.returncode == 0, (path.name, out.stderr[-2000:])
        ran.append(path.name)
    assert {"README.md", "batch_norm.md", "write_your_own_net.md"} <= set(ran)


def _help_entries(script):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout.split("options:", 1)[-1] if "options:" in out.stdout else out.stdout.split(
        "optional arguments:", 1)[-1]
    entries, current = [], None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = [line]
            entries.append(current)
        elif current is not None and line.startswith("   "):
            current.append(line)
    return [" ".join(e) for e in entries]


@pytest.mark.parametrize("script", ["train_cnn.py", "reproduce.py", "predict.py", "bench.py", "launch_local.py",
                                    "export.py"])
def test_help_shows_every_default(script):
    entries = [e for e in _help_entries(script) if not e.strip().startswith("-h")]
    assert entries
    missing = [e.split()[0] for e in entries if "default" not in e]
    assert missing == [], missing
