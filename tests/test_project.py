"""Project-level checks: CI runs exactly the README's commands; pins agree."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
    """(train command, test command): the README's bash lines that train and that run pytest."""
    text = (ROOT / "README.md").read_text()
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    tests = [line for line in lines if "pytest" in line]
    trains = [line for line in lines if line.startswith("python3 -m venv") and "train_cnn.py" in line]
    assert tests and trains, "README.md lacks the install+train or install+test command"
    return trains[0], tests[0]


def ci_text():
    return (ROOT / ".ci" / "run").read_text()


def test_ci_runs_the_readme_test_command_verbatim_on_the_host_and_on_debian_13():
    _, test_command = readme_commands()
    ci_lines = [line.strip() for line in ci_text().splitlines()]
    assert test_command in ci_lines                                    # host
    assert f".ci/fresh_debian trixie '{test_command}'" in ci_lines     # fresh Debian 13


def test_ci_trains_with_the_readme_train_command_on_debian_testing():
    train_command, _ = readme_commands()
    assert re.search(r"^\.ci/fresh_debian testing '" + re.escape(train_command) + r" --epochs 1 ", ci_text(), re.M)


def test_setup_reads_the_pins_from_requirements():
    assert "read_requirements(\"requirements.txt\")" in (ROOT / "setup.py").read_text()
    reqs = (ROOT / "requirements.txt").read_text()
    assert re.search(r'^mxnet==1\.9\.1 ; python_version < "3\.13"', reqs, re.M)
    assert re.search(r'^numpy>=[\d.]+,<1\.24 ; python_version < "3\.12"', reqs, re.M)


def test_the_no_deps_mxnet_of_the_readme_is_the_pinned_one():
    pinned = re.search(r"^mxnet==([\d.]+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    for command in readme_commands():
        assert f"pip install -q --no-deps mxnet=={pinned} &&" in command


def test_requirements_pin_every_numpy_neighbour_per_python():
    """Each of these has one line per Python range, so pip cannot wander across numpy ABIs."""
    reqs = (ROOT / "requirements.txt").read_text()
    for name in ("numpy", "matplotlib", "pandas", "scipy"):
        markers = re.findall(rf"^{name}[=<>!][^;\n]*; (python_version [^#\n]+?)\s*(?:#|$)", reqs, re.M)
        assert markers == ['python_version < "3.12"', 'python_version == "3.12"', 'python_version >= "3.13"'], \
            (name, markers)


def test_the_code_passes_the_projects_linter():
    """ruff with ruff.toml (pycodestyle + pyflakes, 120 columns) over the library, the scripts and the tests."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "mxbn", "scripts", "tests"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
