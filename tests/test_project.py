"""Project-level checks: CI runs exactly the README's test command; pins agree."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_test_command():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [line for block in blocks for line in block.splitlines() if "pytest" in line]
    assert commands, "README.md has no bash block with the pytest command"
    return commands[0].strip()


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_test_command() in ci_lines


def test_setup_reads_the_pins_from_requirements():
    assert "read_requirements(\"requirements.txt\")" in (ROOT / "setup.py").read_text()
    reqs = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^mxnet==1\.9\.1", reqs, re.M)
    assert re.search(r"^numpy>=[\d.]+,<1\.24", reqs, re.M)
