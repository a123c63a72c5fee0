"""`fingerprintd learn`: outcomes from message files, mbox files and Maildir folders.

Each message's first `X-OS-Fingerprint` (ours: the policy service PREPENDs
it above everything, the milter removes copies that came with the message)
names what was seen (`id: <signature hash>/<mail class>/<context bucket>`)
and the client (`client: <address>`); with the Message-ID that is one outcome
for fingerprintd/reputation.py, which counts one message and one client once.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

HEADER = "X-OS-Fingerprint"
Send = Callable[[str, bool, str, str], tuple[str, float]]  # (id, spam, client, message id) -> (result, adjustment)


class LearnError(Exception):
    """An unreadable input (one line for the CLI)."""


def verdict_fields(value: str) -> dict[str, str]:
    """The header's `key: value` fields (the leading OS string has no key)."""
    out = {}
    for part in value.replace("\n", " ").split(";"):
        key, sep, val = part.strip().partition(": ")
        if sep and key.isidentifier():
            out[key] = val.strip()
    return out


def messages(path: str) -> Iterator[tuple[str, Message]]:
    """(where, message) for a message file, an mbox file or a Maildir folder."""
    p = Path(path)
    if p.is_dir():
        if not all((p / sub).is_dir() for sub in ("cur", "new")):
            raise LearnError(f"{path}: a folder that is not a Maildir (no cur/ and new/)")
        box = mailbox.Maildir(str(p), factory=None, create=False)
        for key in box.iterkeys():
            try:
                with box.get_file(key) as fh:
                    yield f"{path}/{key}", email.message_from_binary_file(fh, policy=email.policy.compat32)
            except OSError:
                continue  # moved away by a reader meanwhile
        return
    try:
        with open(p, "rb") as fh:
            start = fh.read(5)
    except OSError as exc:
        raise LearnError(f"{path}: {exc.strerror or exc}") from None
    if start == b"From ":
        box = mailbox.mbox(str(p), factory=None, create=False)
        for i, key in enumerate(box.iterkeys()):
            yield f"{path}#{i + 1}", email.message_from_bytes(box.get_bytes(key), policy=email.policy.compat32)
        return
    with open(p, "rb") as fh:
        yield path, email.message_from_binary_file(fh, policy=email.policy.compat32)


def outcome_of(msg: Message) -> tuple[str, str, str] | str:
    """(id, client, message id) of our verdict, or why there is none."""
    values = msg.get_all(HEADER) or []
    if not values:
        return "no-header"
    fields = verdict_fields(str(values[0]))
    if "id" not in fields or "client" not in fields:
        return "no-verdict"  # "unavailable; reason: ...", a trusted client, an older header
    return fields["id"], fields["client"], str(msg.get("Message-ID", "") or "").strip()


def learn_messages(paths: list[str], spam: bool, send: Send, emit: Callable[[str], None] | None = None) -> dict:
    import json

    from fingerprintd.reputation import ReputationError

    for path in paths:
        if not os.path.exists(path):
            raise LearnError(f"{path}: no such file or folder")
    summary: Counter[str] = Counter()
    for path in paths:
        for where, msg in messages(path):
            summary["messages"] += 1
            found = outcome_of(msg)
            adjustment = None
            if isinstance(found, str):
                result = found
            else:
                key, client, message_id = found
                try:
                    result, adjustment = send(key, spam, client, message_id)
                except ReputationError:
                    result = "bad-header"
            summary[result] += 1
            if emit is not None:
                emit(json.dumps({"message": where, "result": result, "adjustment": adjustment}))
    return dict(summary)


def feedback_sender(server: str, token: str, timeout: float) -> Send:
    """Outcomes through a running service's Feedback RPC."""
    import grpc

    from fingerprintd.reputation import ReputationError
    from fingerprintd.v1 import fingerprintd_pb2 as pb
    from fingerprintd.v1 import fingerprintd_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(server)
    stub = pb_grpc.FingerprintStub(channel)
    metadata = [("authorization", f"Bearer {token}")] if token else None

    def send(key: str, spam: bool, client: str, message_id: str) -> tuple[str, float]:
        try:
            reply = stub.Feedback(pb.FeedbackRequest(id=key, spam=spam, client_ip=client, message_id=message_id),
                                  timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ReputationError(exc.details()) from None
            raise LearnError(f"{server}: {exc.code().name}: {exc.details()}") from None
        return reply.result, reply.adjustment

    return send
