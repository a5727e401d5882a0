"""Why the broker refuses this client for good: TLS trust, client certificate, SASL credentials.

aiokafka reports every failed bootstrap as `KafkaConnectionError("Unable to bootstrap ...")`,
whether the broker is down (worth retrying) or refuses us (retrying forever is a crash loop
that hides the cause). After a failed connect the service asks `diagnose()`, which repeats
the connection to the first bootstrap server step by step:

1. TLS (`SSL`, `SASL_SSL`): a handshake with the service's own `ssl_context`. A certificate
   that does not verify against `ssl_cafile` (or the host name) fails here; a broker that
   requires a client certificate and refuses ours sends its alert right after the handshake
   (TLS 1.3), so one read waits briefly for it.
2. SASL (`SASL_*`): one aiokafka connection with the configured mechanism and credentials;
   the broker answers wrong ones with `SaslAuthenticationFailed`.

A refusal becomes a `BrokerAccessError` whose message says what to check; everything else
(unreachable, timed out, closed) is left to the retry loop. Messages never hold a secret.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from consumers.config import ServiceConfig
from consumers.errors import BrokerAccessError

CONNECT_TIMEOUT = 10.0
ALERT_WAIT = 1.0  # how long to wait after the handshake for a TLS 1.3 alert about our certificate

_REFUSED = (SaslAuthenticationFailed, AuthenticationFailedError, AuthenticationMethodNotSupported,
            UnsupportedSaslMechanismError)


def first_bootstrap(config: ServiceConfig) -> tuple[str, int]:
    """Host and port of the first of `bootstrap_servers` (IPv6 in brackets allowed)."""
    first = config.bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host:
        return first.strip("[]"), 9092
    return host.strip("[]"), int(port)


async def diagnose(config: ServiceConfig) -> BrokerAccessError | None:
    """The reason the first bootstrap server refuses this client for good, or None (down, or no refusal seen)."""
    if config.security_protocol == "PLAINTEXT":
        return None
    try:
        host, port = first_bootstrap(config)
    except ValueError:
        return None
    where = f"{host}:{port}"
    if config.tls:
        refused = await _tls_refusal(config, host, port, where)
        if refused is not None:
            return refused
    if config.sasl_mechanism is not None:
        return await _sasl_refusal(config, host, port, where)
    return None


async def _tls_refusal(config: ServiceConfig, host: str, port: int, where: str) -> BrokerAccessError | None:
    context = config.ssl_context()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), CONNECT_TIMEOUT
        )
    except ssl.SSLCertVerificationError as exc:
        trusted = f"the CAs in ssl_cafile {config.ssl_cafile}" if config.ssl_cafile else "the system's CAs"
        return BrokerAccessError(
            f"TLS: the certificate of the broker at {where} is not trusted: {exc.verify_message or exc.reason}. "
            f"It must be signed by {trusted} and name the host {host!r}; set ssl_cafile to the CA that signed "
            f"the brokers' certificates"
        )
    except ssl.SSLError as exc:
        return _certificate_alert(exc, config, where)
    except (OSError, TimeoutError):
        return None  # not reachable: the retry loop's business
    try:
        await asyncio.wait_for(reader.read(1), ALERT_WAIT)
    except ssl.SSLError as exc:
        return _certificate_alert(exc, config, where)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
    return None


def _certificate_alert(exc: ssl.SSLError, config: ServiceConfig, where: str) -> BrokerAccessError | None:
    """A TLS alert about our certificate (missing, unknown CA, expired), else None."""
    reason = exc.reason or ""
    if "CERTIFICATE" not in reason and "UNKNOWN_CA" not in reason:
        return None
    if config.ssl_certfile is None:
        advice = "the broker requires a client certificate (mutual TLS): set ssl_certfile and ssl_keyfile"
    else:
        advice = (f"the broker does not accept the client certificate ssl_certfile {config.ssl_certfile}: "
                  f"it must be valid and signed by a CA the broker trusts")
    return BrokerAccessError(f"TLS: the broker at {where} refused the connection ({reason}); {advice}")


async def _sasl_refusal(config: ServiceConfig, host: str, port: int, where: str) -> BrokerAccessError | None:
    kw = config.kafka_client_kwargs()
    try:
        conn = await asyncio.wait_for(create_conn(
            host, port,
            client_id=config.client_id,
            ssl_context=kw.get("ssl_context"),
            security_protocol=config.security_protocol,
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=kw.get("sasl_plain_username"),
            sasl_plain_password=kw.get("sasl_plain_password"),
        ), CONNECT_TIMEOUT)
    except _REFUSED as exc:
        return BrokerAccessError(
            f"SASL: the broker at {where} refused user {config.sasl_username!r} with {config.sasl_mechanism}: "
            f"{type(exc).__name__}: {exc}. Check sasl_username and the password (sasl_password or "
            f"sasl_password_file), and that the user has {config.sasl_mechanism} credentials on the brokers"
        )
    except (KafkaError, OSError, TimeoutError):
        return None
    conn.close()
    return None
