"""Generated gRPC and protobuf code for proto/fingerprintd/v1/fingerprintd.proto.

Regenerate with `make proto`; tests/test_proto.py fails when these files are stale.
"""
