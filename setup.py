"""Builds the embstore Python package: python/embstore plus its C++ extension.

The extension is built by CMake from this repository (the same sources as
libembstore, linked statically into the module, with only the module's entry
point exported), in build/python (EMBSTORE_PYTHON_BUILD_DIR overrides it).
Everything comes from Debian: setuptools, wheel, pybind11-dev, python3-dev,
numpy. EMBSTORE_CUDA=ON|OFF|AUTO (default OFF) chooses the CUDA module;
EMBSTORE_JOBS the build's parallelism (default 2).
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent


def project_version() -> str:
    """The version, from project(embstore VERSION ...) in CMakeLists.txt: the one place."""
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"project\(embstore\s+VERSION\s+([0-9.]+)", text)
    if not m:
        raise RuntimeError("no project(embstore VERSION ...) in CMakeLists.txt")
    return m.group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str, target: str):
        super().__init__(name, sources=[])
        self.target = target


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        build_dir = pathlib.Path(
            os.environ.get("EMBSTORE_PYTHON_BUILD_DIR", ROOT / "build" / "python")).resolve()
        jobs = os.environ.get("EMBSTORE_JOBS", "2")
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DEMBSTORE_BUILD_PYTHON=ON",
            "-DEMBSTORE_BUILD_TESTS=OFF",
            "-DEMBSTORE_BUILD_BENCHMARKS=OFF",
            "-DEMBSTORE_CUDA=" + os.environ.get("EMBSTORE_CUDA", "OFF"),
            "-DPython_EXECUTABLE=" + sys.executable,
        ]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", ext.target,
                               "-j", jobs])
        # The module for this interpreter (a build directory may hold others').
        built = build_dir / "python" / (ext.target + sysconfig.get_config_var("EXT_SUFFIX"))
        if not built.exists():
            raise RuntimeError(f"CMake built no {built}")
        dest = pathlib.Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, dest)


setup(
    name="embstore",
    version=project_version(),
    description="Very large embedding tables served from memory-mapped files, "
                "with torch's embedding_bag on CPU",
    long_description=(ROOT / "python" / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["embstore"],
    package_dir={"": "python"},
    package_data={"embstore": ["py.typed", "*.pyi"]},
    ext_modules=[CMakeExtension("embstore._embstore", target="_embstore")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["numpy"],
    extras_require={"torch": ["torch"]},
    zip_safe=False,
)
