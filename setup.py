"""pip install --no-build-isolation .   (Debian: python3-setuptools python3-pybind11 python3-dev)

Builds the Python module mmfree from python/ over the header-only library in include/ (the same
module CMake builds with -DMMFREE_BUILD_PYTHON). No network: setuptools and pybind11 come from
the system, hence --no-build-isolation.
"""
import re

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

version = re.search(r'MMFREE_VERSION_STRING "([^"]+)"', open("include/mmfree/version.hpp").read()).group(1)

setup(
    name="mmfree",
    version=version,
    description="MatMul-free language models (hgrn_bit) on the CPU",
    packages=["mmfree"],
    package_dir={"mmfree": "python/mmfree"},
    ext_modules=[Pybind11Extension("mmfree._mmfree", ["python/src/mmfree_ext.cpp"], include_dirs=["include"],
                                   cxx_std=20, extra_compile_args=["-O3"])],
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.9",
    install_requires=["numpy"],
    zip_safe=False,
)
