"""Where the bundled signature database, mail classes and policy are."""

from __future__ import annotations

from pathlib import Path


def bundled(name: str) -> str:
    """signatures/NAME in a checkout, or the installed package's copy."""
    checkout = Path(__file__).resolve().parent.parent / "signatures" / name
    if checkout.is_file():
        return str(checkout)
    from importlib import resources  # only an installed package needs it (and every command would pay its import)

    return str(resources.files("fingerprintd._db").joinpath(name))


def default_signatures() -> str:
    return bundled("p0f.fp")


def default_policy() -> str:
    return bundled("policy.toml")


def default_classes() -> str:
    return bundled("classes.toml")
