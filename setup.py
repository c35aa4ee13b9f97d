"""Builds the embstore Python package: python/embstore plus its C++ extension.

The extension is built by CMake from this repository (the same sources as
libembstore, linked statically into the module, with only the module's entry
point exported), in build/python (EMBSTORE_PYTHON_BUILD_DIR overrides it).
Everything comes from Debian: setuptools, wheel, pybind11-dev, python3-dev,
numpy. EMBSTORE_CUDA=ON|OFF|AUTO (default OFF) chooses the CUDA module;
EMBSTORE_JOBS the build's parallelism (default 2).

The gRPC client's stubs (embstore/v1/embstore_pb2.py, embstore_pb2_grpc.py)
are generated at build time from proto/embstore/v1/embstore.proto by protoc
(Debian: protobuf-compiler) and grpc_python_plugin (protobuf-compiler-grpc)
into the built package; they are never committed. PROTOC and
GRPC_PYTHON_PLUGIN override where those are found.
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
from setuptools.command.build_py import build_py

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


PROTO = "embstore/v1/embstore.proto"  # under proto/; its package is embstore.v1
STUBS = ["embstore/v1/embstore_pb2.py", "embstore/v1/embstore_pb2_grpc.py"]


def find_tool(env: str, name: str, package: str) -> str:
    path = os.environ.get(env) or shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"embstore: {name} is needed to generate the gRPC client's stubs from "
            f"proto/{PROTO} and was not found (install the Debian package {package}, "
            f"or set {env} to its path)")
    return path


def generate_stubs(out_dir: pathlib.Path) -> list:
    """Runs protoc with the gRPC Python plugin: out_dir/embstore/v1/embstore_pb2*.py."""
    protoc = find_tool("PROTOC", "protoc", "protobuf-compiler")
    plugin = find_tool("GRPC_PYTHON_PLUGIN", "grpc_python_plugin", "protobuf-compiler-grpc")
    (out_dir / "embstore" / "v1").mkdir(parents=True, exist_ok=True)
    cmd = [protoc, "-I" + str(ROOT / "proto"), "--python_out=" + str(out_dir),
           "--grpc_out=" + str(out_dir), "--plugin=protoc-gen-grpc=" + plugin,
           str(ROOT / "proto" / PROTO)]
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"embstore: generating the gRPC stubs failed: {' '.join(cmd)} "
                           f"exited {e.returncode}") from e
    outputs = [out_dir / f for f in STUBS]
    for f in outputs:
        if not f.exists():
            raise RuntimeError(f"embstore: protoc made no {f} ({' '.join(cmd)})")
    return [str(f) for f in outputs]


class BuildPy(build_py):
    """build_py, then the gRPC stubs into the built package (the source tree's
    python/embstore/v1 for an editable install: .gitignore keeps them out of git)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            generate_stubs(ROOT / "python")
        else:
            generate_stubs(pathlib.Path(self.build_lib))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, f) for f in STUBS]


setup(
    name="embstore",
    version=project_version(),
    description="Very large embedding tables served from memory-mapped files, "
                "with torch's embedding_bag on CPU",
    long_description=(ROOT / "python" / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["embstore", "embstore.v1"],
    package_dir={"": "python"},
    package_data={"embstore": ["py.typed", "*.pyi"]},
    ext_modules=[CMakeExtension("embstore._embstore", target="_embstore")],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
    install_requires=["numpy"],
    # embstore.Client (gRPC): Debian's python3-grpcio and python3-protobuf.
    extras_require={"torch": ["torch"], "client": ["grpcio", "protobuf"]},
    zip_safe=False,
)
