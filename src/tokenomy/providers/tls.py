"""The TLS context of a vendor's connections: the system's trust store, or the vendor's
own CA bundle, and a client certificate where the vendor wants mutual TLS."""

from __future__ import annotations

import ssl


def client_context(
    ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext:
    """Verifying (always) against ``ca_file`` when given, else the system's CAs.

    A CA bundle replaces the system's store, as curl's ``--cacert`` does: a private
    gateway's certificate is trusted, a public one it did not sign is not.
    """
    ctx = ssl.create_default_context(cafile=ca_file)
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    return ctx
