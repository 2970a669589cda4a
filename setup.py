"""Build hook: generate the gRPC stubs from protos/ into the package.

The stubs are never committed. Every build (wheel, sdist, editable install)
regenerates them, so the package always matches protos/.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PROTO_DIR = ROOT / "protos"


def generate_stubs() -> None:
    """Compile protos/**/*.proto to *_pb2.py, *_pb2.pyi and *_pb2_grpc.py."""
    from importlib.resources import files

    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    well_known = str(files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")

    # The protos live under authsvc/, so their output lands inside our package.
    for proto in protos:
        (ROOT / Path(proto).parent / "__init__.py").touch()


def generated_packages() -> list[str]:
    found = {p.relative_to(PROTO_DIR).parent.parts for p in PROTO_DIR.rglob("*.proto")}
    return sorted(".".join(parts) for parts in found)


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()

        # A clean checkout has no generated package yet when setuptools looks
        # for packages, so add it here once it exists.
        for package in generated_packages():
            if package not in (self.packages or []):
                self.packages = [*(self.packages or []), package]
        super().run()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithStubs})
