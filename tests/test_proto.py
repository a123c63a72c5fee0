"""The committed generated code is what the pinned grpcio-tools makes of the .proto."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

GENERATED = ("fingerprintd_pb2.py", "fingerprintd_pb2_grpc.py", "fingerprintd_pb2.pyi")


def test_generated_code_is_current(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
                           f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
                           str(ROOT / "proto" / "fingerprintd" / "v1" / "fingerprintd.proto")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in GENERATED:
        fresh = (tmp_path / "fingerprintd" / "v1" / name).read_text()
        committed = (ROOT / "fingerprintd" / "v1" / name).read_text()
        assert fresh == committed, f"fingerprintd/v1/{name} is stale: run `make proto`"
