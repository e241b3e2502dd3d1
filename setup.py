"""Install mxbn: `pip install -r requirements.txt -e .` (add `.[test]` for the test tools)."""
import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def read_requirements(path):
    """Requirement lines of requirements.txt without comments: one list of pins for both files."""
    lines = (re.sub(r"\s*#.*$", "", line).strip() for line in (HERE / path).read_text().splitlines())
    return [line for line in lines if line]


def read_version():
    return re.search(r'^__version__ = "([^"]+)"', (HERE / "mxbn" / "__init__.py").read_text(), re.M).group(1)


setup(
    name="mxbn",
    version=read_version(),
    description="Exact, fast functional batch normalization and a small CNN trainer on MXNet",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mxbn", "mxbn.*"]),
    # requirements.txt pins per Python version; 3.9-3.14 are tested (README's table)
    python_requires=">=3.8",
    install_requires=read_requirements("requirements.txt"),
    # the test extra also runs docs/tutorial.ipynb in a real Jupyter kernel
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6"]},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
