"""Build script. The package is pure Python today; the CUDA extension (csrc/) hooks in here later."""
from setuptools import setup

setup()
