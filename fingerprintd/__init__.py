"""fingerprintd: passive TCP/IP OS fingerprinting for mail servers."""

__version__ = "0.1.0"
