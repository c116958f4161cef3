"""TLS: HTTPS listeners with certificates chosen by SNI (Kong's rules), and TLS to upstreams.

Downstream (clients)
--------------------
A listener written ``0.0.0.0:8443 ssl`` in ``gateway.listen`` serves HTTPS. Each Kong ``certificates`` entity becomes
one ``ssl.SSLContext`` (its ``cert``/``key``, plus ``cert_alt``/``key_alt`` when set, e.g. RSA and ECDSA side by
side). The listener's context takes protocol versions and ciphers from the *current* runtime for each new
connection, and its ``sni_callback`` picks the context for the name the client sent, so a reload applies to new
connections without touching the listening socket. The choice follows Kong (``kong/runloop/certificate.lua`` ``find_certificate``), first hit wins:

1. the exact name (``api.example.com``);
2. the prefix wildcard made by replacing the first label (``*.example.com`` for ``api.example.com``; one label
   only, so ``*.example.com`` matches neither ``example.com`` nor ``a.b.example.com``);
3. the suffix wildcard made by replacing the last label (``api.example.*`` for ``api.example.com``);
4. an SNI named ``*`` (Kong's catch-all);
5. the default certificate: ``gateway.ssl_cert``/``ssl_cert_key`` if set (Kong's ``ssl_cert``), else a self-signed
   certificate generated once per process (Kong generates one at ``kong prepare``). Also used without SNI.

Names compare case-insensitively (DNS names are; Kong compares them as stored).

Protocols and ciphers come from ``gateway.ssl_cipher_suite`` (Kong's names and Mozilla's lists): ``intermediate``
(default: TLS 1.2 and 1.3, Kong's intermediate cipher list), ``modern`` (TLS 1.3 only), or ``custom``
(``gateway.ssl_ciphers``, an OpenSSL cipher string, with ``gateway.ssl_protocols``). TLS 1.0 and 1.1 are never
offered. ALPN offers ``http/1.1`` only. Python's ``ssl`` cannot restrict TLS 1.3 cipher suites (all of OpenSSL's
defaults are strong).

Upstreams
---------
A service with ``protocol: https`` gets one client ``SSLContext``, built here at compile time and shared by every
service with the same settings. As in Kong:

* ``tls_verify`` unset means off (Kong leaves it to nginx's ``proxy_ssl_verify``, which is off).
* ``tls_verify_depth`` unset means 1 (nginx's ``proxy_ssl_verify_depth`` default): at most one intermediate CA
  between the upstream's certificate and a trusted one. OpenSSL's own limit cannot be set from Python, so the depth
  is checked on the verified chain right after the handshake (the connection is dropped, as a failed handshake).
* ``ca_certificates`` lists the CAs to trust. Without it, verification uses the system's trust store (Kong would
  use nginx's ``proxy_ssl_trusted_certificate``, empty by default, so every verified handshake fails there).
* ``client_certificate`` (or the upstream's, as Kong's fallback) is presented for mutual TLS.
* The SNI and the name verified are the host of the ``Host`` sent upstream (nginx ``proxy_ssl_name
  $upstream_host``): the target's host or the upstream's ``host_header``, or the client's host with
  ``preserve_host``. An IP address is verified against the certificate's IP addresses and sent without SNI.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

# ``cryptography`` (PEM parsing, the generated certificate) is imported by the functions that need it: a gateway
# without TLS never loads it.

log = logging.getLogger("gwanmun.tls")

__all__ = [
    "CIPHER_SUITES",
    "PemError",
    "ServerTLS",
    "UpstreamTLS",
    "build_server_tls",
    "build_upstream_tls",
    "ca_problems",
    "cert_key_problems",
    "default_certificate",
    "key_type",
    "load_pem_certificates",
    "load_pem_key",
    "listener_context",
    "server_context",
    "sni_candidates",
]

# Kong's cipher suites (kong/conf_loader/constants.lua, Mozilla's Server Side TLS 5.7), minus ``old``/``fips``.
CIPHER_SUITES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "modern": (("TLSv1.3",), None),
    "intermediate": (
        ("TLSv1.2", "TLSv1.3"),
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305",
    ),
}
TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
DEFAULT_VERIFY_DEPTH = 1  # nginx's proxy_ssl_verify_depth
ALPN = ["http/1.1"]


# ---------------------------------------------------------------------------------------------------------------------
# PEM parsing and checks (the config layer reports these with the field path)
# ---------------------------------------------------------------------------------------------------------------------


class PemError(ValueError):
    """A certificate or key that cannot be used; the message says why."""


def _check_text(pem: str, what: str) -> bytes:
    if pem.lstrip().startswith("{vault://"):
        raise PemError(f"invalid {what}: vault references are not supported by gwanmun yet")
    if "-----BEGIN" not in pem:
        raise PemError(f"invalid {what}: expected PEM text ('-----BEGIN ...')")
    return pem.encode("utf-8", "replace")


def load_pem_certificates(pem: str) -> list[Any]:
    """Every certificate in ``pem`` (a leaf and its chain), in order (``cryptography.x509.Certificate``). Raises
    ``PemError``."""
    from cryptography import x509

    data = _check_text(pem, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise PemError(f"invalid PEM certificate: {_reason(e)}") from None
    if not certs:  # pragma: no cover - load_pem_x509_certificates raises instead
        raise PemError("invalid PEM certificate: no certificate found")
    return certs


def load_pem_key(pem: str) -> Any:
    """The private key in ``pem``. Raises ``PemError`` (also for an encrypted key: there is no passphrase)."""
    from cryptography.hazmat.primitives import serialization

    data = _check_text(pem, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PemError("invalid private key: encrypted private keys are not supported (decrypt it first)") from None
    except (ValueError, Exception) as e:  # cryptography raises ValueError, or UnsupportedAlgorithm
        raise PemError(f"invalid PEM private key: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    text = str(e).split("\n")[0].strip() or type(e).__name__
    return text.rstrip(".")


def _spki(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_type(key: Any) -> str:
    """'RSA', 'ECDSA', 'Ed25519', ... for a private or public key."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RSA"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ECDSA"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "Ed25519"
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return "Ed448"
    if isinstance(key, (dsa.DSAPrivateKey, dsa.DSAPublicKey)):
        return "DSA"
    return type(key).__name__


def cert_key_problems(cert_pem: str, key_pem: str) -> str | None:
    """Why this certificate and key cannot be served together (Kong: "certificate does not match key"), or None.
    PEM syntax errors are not reported here (each field reports its own)."""
    try:
        leaf = load_pem_certificates(cert_pem)[0]
        key = load_pem_key(key_pem)
    except PemError:
        return None
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        return "certificate does not match key"
    return None


def ca_problems(cert_pem: str, now: datetime.datetime | None = None) -> str | None:
    """Kong's checks for a ``ca_certificates`` entity: one certificate, a CA, not expired. None if fine."""
    from cryptography import x509

    try:
        certs = load_pem_certificates(cert_pem)
    except PemError:
        return None
    if len(certs) > 1:
        return "please submit only one certificate at a time"
    cert = certs[0]
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        return 'certificate expired, "Not After" time is in the past'
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return 'certificate does not appear to be a CA because it is missing the "CA" basic constraint'
    return None


def ca_digest(cert_pem: str) -> str:
    """Kong's ``cert_digest``: the sha256 of the certificate's DER, in hex."""
    from cryptography.hazmat.primitives import hashes

    return load_pem_certificates(cert_pem)[0].fingerprint(hashes.SHA256()).hex()


# ---------------------------------------------------------------------------------------------------------------------
# Loading PEM text into an SSLContext
# ---------------------------------------------------------------------------------------------------------------------


def _load_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``SSLContext.load_cert_chain`` reads files only: hand it the PEM through an anonymous in-memory file (Linux
    ``memfd``), so a private key never touches the disk; elsewhere a private temporary file, removed at once."""
    data = (cert_pem.rstrip("\n") + "\n" + key_pem.rstrip("\n") + "\n").encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("gwanmun-cert", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    tmpdir = tempfile.mkdtemp(prefix="gwanmun-cert-")  # pragma: no cover - non-Linux
    path = os.path.join(tmpdir, "chain.pem")  # pragma: no cover
    try:  # pragma: no cover
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ctx.load_cert_chain(path)
    finally:  # pragma: no cover
        try:
            os.remove(path)
        finally:
            os.rmdir(tmpdir)


# ---------------------------------------------------------------------------------------------------------------------
# The generated default certificate
# ---------------------------------------------------------------------------------------------------------------------

_default_lock = threading.Lock()
_default_pair: tuple[str, str] | None = None


def default_certificate() -> tuple[str, str]:
    """(cert PEM, key PEM) of a self-signed ECDSA P-256 certificate for ``localhost``, made once per process (and
    inherited by forked workers), as Kong makes ``kong-default.crt`` when no ``ssl_cert`` is configured."""
    global _default_pair
    with _default_lock:
        if _default_pair is None:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID

            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gwanmun"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "gwanmun default certificate"),
            ])
            now = datetime.datetime.now(datetime.timezone.utc)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(key, hashes.SHA256())
            )
            _default_pair = (
                cert.public_bytes(serialization.Encoding.PEM).decode(),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode(),
            )
        return _default_pair


# ---------------------------------------------------------------------------------------------------------------------
# Server side: one context per certificate, chosen by SNI
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    """Protocol versions and ciphers every server context of a runtime shares."""

    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str | None = CIPHER_SUITES["intermediate"][1]

    def new_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        ctx.maximum_version = self.max_version
        if self.ciphers:
            ctx.set_ciphers(self.ciphers)
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        ctx.set_alpn_protocols(ALPN)
        return ctx


def server_settings(gw: Any) -> ServerSettings:
    """The protocol versions and ciphers of ``gateway:`` (validated by the config layer)."""
    suite = gw.ssl_cipher_suite
    if suite == "custom":
        names = gw.ssl_protocols.split()
        ciphers = gw.ssl_ciphers
    else:
        names, ciphers = list(CIPHER_SUITES[suite][0]), CIPHER_SUITES[suite][1]
        if suite == "intermediate":  # ssl_protocols may narrow it (e.g. to TLS 1.3 only)
            names = [n for n in gw.ssl_protocols.split() if n in names] or names
    versions = sorted(TLS_VERSIONS[n] for n in names)
    return ServerSettings(min_version=versions[0], max_version=versions[-1], ciphers=ciphers)


def sni_candidates(name: str) -> list[str]:
    """The SNI entries that may serve ``name``, best first (Kong's ``produce_wild_snis`` plus the catch-all)."""
    out = [name]
    labels = name.split(".")
    if len(labels) >= 3 and all(labels[:2]):  # ([^.]+)(\.[^.]+\.\S+) -> *$2
        out.append("*." + name.split(".", 1)[1])
    if len(labels) >= 2 and labels[-1] and labels[-2]:  # ([^.]+\.)([^.]+)$ -> $1*
        out.append(name[: name.rfind(".") + 1] + "*")
    out.append("*")
    return out


class ServerTLS:
    """The compiled certificate table of a runtime: SNI name -> server context, and the default context."""

    __slots__ = ("settings", "by_name", "default", "default_pairs", "_cache")

    def __init__(self, settings: ServerSettings, by_name: dict[str, ssl.SSLContext], default: ssl.SSLContext,
                 default_pairs: list[tuple[str, str]] | None = None):
        self.settings = settings
        self.by_name = by_name  # exact names, '*.x.y', 'x.*' and '*' as written (lower-case)
        self.default = default
        self.default_pairs = default_pairs or []  # (cert PEM, key PEM) of the default certificate
        self._cache: dict[str, ssl.SSLContext] = {}

    def select(self, name: str | None) -> ssl.SSLContext:
        """The context for a client's SNI (None: no SNI sent)."""
        if not name:
            return self.default
        ctx = self._cache.get(name)
        if ctx is not None:
            return ctx
        by_name = self.by_name
        ctx = self.default
        for candidate in sni_candidates(name.lower().rstrip(".")):
            found = by_name.get(candidate)
            if found is not None:
                ctx = found
                break
        if len(self._cache) < 4096:  # names are the client's choice: bound the memo
            self._cache[name] = ctx
        return ctx


def _certificate_context(settings: ServerSettings, pairs: list[tuple[str, str]]) -> ssl.SSLContext:
    ctx = settings.new_context()
    for cert_pem, key_pem in pairs:
        _load_chain(ctx, cert_pem, key_pem)
    return ctx


def _read_pem(value: str) -> str:
    """``ssl_cert`` values are a file path or the PEM text itself (as in kong.conf)."""
    if "-----BEGIN" in value:
        return value
    with open(value, encoding="utf-8") as f:
        return f.read()


def build_server_tls(cfg: Any) -> ServerTLS:
    """Certificates and SNIs of a validated ``DeclarativeConfig`` -> the table the listeners choose from."""
    gw = cfg.gateway
    settings = server_settings(gw)
    if gw.ssl_cert:
        pairs_default = [(_read_pem(c), _read_pem(k)) for c, k in zip(gw.ssl_cert, gw.ssl_cert_key)]
    else:
        pairs_default = [default_certificate()]
    default = _certificate_context(settings, pairs_default)
    contexts: dict[int, ssl.SSLContext] = {}
    by_name: dict[str, ssl.SSLContext] = {}
    for name, cert in cfg.all_snis():
        ctx = contexts.get(id(cert))
        if ctx is None:
            pairs = [(cert.cert, cert.key)]
            if cert.cert_alt and cert.key_alt:
                pairs.append((cert.cert_alt, cert.key_alt))
            ctx = contexts[id(cert)] = _certificate_context(settings, pairs)
        by_name[name.lower()] = ctx
    return ServerTLS(settings, by_name, default, pairs_default)


class _ListenerContext(ssl.SSLContext):
    """The context an HTTPS listener gives uvloop. Every new connection calls ``wrap_bio``; before that, this context
    takes the current runtime's protocol versions and ciphers (fixed per connection once it exists), so a reload
    applies them to the next connection. Its ``sni_callback`` then picks the certificate from the current runtime."""

    current: Callable[[], ServerTLS | None]
    applied: ServerSettings | None

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:  # type: ignore[override]
        tls = self.current()
        if tls is not None and tls.settings != self.applied:
            self.apply(tls.settings)
        return super().wrap_bio(*args, **kwargs)

    def apply(self, settings: ServerSettings) -> None:
        self.minimum_version = settings.min_version
        self.maximum_version = settings.max_version
        if settings.ciphers:
            self.set_ciphers(settings.ciphers)
        self.applied = settings


def server_context(current: Callable[[], ServerTLS | None]) -> ssl.SSLContext:
    """The context to give ``loop.create_server(ssl=...)`` for an HTTPS listener.

    ``current`` returns the current runtime's ``ServerTLS`` (None if it has none). Each connection takes its protocol
    versions and ciphers from it, and each handshake its certificate (``sni_callback``), so a reload applies to the
    connections accepted after it, without reopening the listening socket.
    """
    tls = current()
    if tls is None:
        raise ValueError("no TLS configuration compiled: the runtime has no HTTPS listener")
    base = _ListenerContext(ssl.PROTOCOL_TLS_SERVER)
    base.current = current
    base.options |= ssl.OP_NO_RENEGOTIATION
    base.set_alpn_protocols(ALPN)
    base.apply(tls.settings)
    for cert_pem, key_pem in tls.default_pairs:  # served if a handshake never reaches the callback
        _load_chain(base, cert_pem, key_pem)

    def sni_callback(sslobj: Any, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        cur = current()
        if cur is None:
            return None
        try:
            sslobj.context = cur.select(name)
        except Exception:  # pragma: no cover - never let a handshake hang on a bug here
            log.exception("choosing a certificate for SNI %r failed", name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    base.sni_callback = sni_callback
    return base


def listener_context(listen: str, current: Callable[[], ServerTLS | None]) -> ssl.SSLContext | None:
    """For one ``gateway.listen`` entry: the ``ssl=`` context of an HTTPS listener (Kong's ``ssl`` flag, e.g.
    ``0.0.0.0:8443 ssl``; see ``server_context``), or None for plain HTTP."""
    if "ssl" not in listen.split()[1:]:
        return None
    return server_context(current)


# ---------------------------------------------------------------------------------------------------------------------
# Client side: TLS to upstreams
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class UpstreamTLS:
    """How a service's connections to its upstream speak TLS. ``key`` identifies the settings (pools are keyed by
    it, with the address and the SNI), so services with the same settings share pools and a reload that keeps them
    keeps warm connections."""

    context: ssl.SSLContext
    verify: bool
    depth: int
    key: tuple[Any, ...]
    label: str = field(default="")

    def check(self, transport: Any) -> None:
        """After the handshake: enforce ``tls_verify_depth`` (intermediate CAs between the peer's certificate and
        the trust anchor). Raises ``ssl.SSLCertVerificationError``."""
        if not self.verify:
            return
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None:  # pragma: no cover - not a TLS transport
            return
        get_chain = getattr(sslobj, "get_verified_chain", None)  # public from Python 3.13
        if get_chain is None:
            get_chain = sslobj._sslobj.get_verified_chain
        chain = get_chain()
        intermediates = max(0, len(chain) - 2)
        if intermediates > self.depth:
            err = ssl.SSLCertVerificationError(
                f"certificate chain too long: {intermediates} intermediate CA certificate(s), tls_verify_depth is "
                f"{self.depth}"
            )
            err.verify_message = "certificate chain too long"
            raise err


def build_upstream_tls(
    *,
    verify: bool,
    depth: int | None,
    ca_pems: list[str],
    client_cert: tuple[str, str] | None,
    cache: dict[tuple[Any, ...], UpstreamTLS] | None = None,
) -> UpstreamTLS:
    """One client context for these settings (shared through ``cache`` by services that have the same)."""
    depth = DEFAULT_VERIFY_DEPTH if depth is None else depth
    h = hashlib.sha256()
    for pem in ca_pems:
        h.update(pem.encode())
        h.update(b"\0")
    ca_id = h.hexdigest() if ca_pems else "system"
    client_id = hashlib.sha256("\0".join(client_cert).encode()).hexdigest() if client_cert else ""
    key = ("tls", verify, depth if verify else 0, ca_id if verify else "", client_id)
    if cache is not None and key in cache:
        return cache[key]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca_pems:
            ctx.load_verify_locations(cadata="\n".join(ca_pems))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        _load_chain(ctx, *client_cert)
    ctx.set_alpn_protocols(ALPN)
    out = UpstreamTLS(context=ctx, verify=verify, depth=depth, key=key,
                      label=("verify" if verify else "no-verify") + (" mtls" if client_cert else ""))
    if cache is not None:
        cache[key] = out
    return out


def cert_key_type(cert_pem: str) -> str | None:
    """The key type of a PEM certificate's leaf ('RSA', 'ECDSA', ...), or None if it does not parse."""
    try:
        return key_type(load_pem_certificates(cert_pem)[0].public_key())
    except PemError:
        return None
