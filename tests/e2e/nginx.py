"""A private nginx (Debian's package) as the TLS-terminating reverse proxy in front of Berth
instances, running the shipped configuration, deploy/nginx.conf.

The file is rendered, not copied: `render_config` replaces only what must differ in a test (the
listen address, file paths, the certificate, the upstream servers) and fails if any of the
lines it replaces is missing or repeated, so the tests cannot drift from the shipped file."""

from __future__ import annotations

import datetime
import ipaddress
import re
import time
from pathlib import Path

import requests

from .process import REPO_ROOT, _Process, free_port, require_binary

DEPLOY_CONF = REPO_ROOT / "deploy" / "nginx.conf"

# The shipped upstream line (the first instance); rendering repeats it once per test instance.
_UPSTREAM_SERVER = re.compile(r"^(?P<indent>[ \t]*)server 127\.0\.0\.1:5000(?P<params>[^;\n]*);$", re.M)


def render_config(
    workdir: Path, port: int, upstreams: list[str], cert: Path, key: Path, workers: int = 2
) -> str:
    """deploy/nginx.conf for a private nginx on 127.0.0.1:`port`, everything under `workdir`."""
    w = Path(workdir)
    text = DEPLOY_CONF.read_text()
    replacements = [
        ("user www-data;", "user root;"),  # the test's files are root's (ignored when not root)
        ("worker_processes auto;", f"worker_processes {workers};"),
        ("pid /run/nginx.pid;", f"pid {w}/nginx.pid;"),
        ("error_log /var/log/nginx/error.log;", f"error_log {w}/error.log info;"),
        ("access_log /var/log/nginx/berth-access.log berth;", f"access_log {w}/access.log berth;"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("/etc/ssl/berth/registry.crt;", f"{cert};"),
        ("/etc/ssl/berth/registry.key;", f"{key};"),
        # Temporary files (unused by /v2/, whose bodies are never buffered): Debian's defaults
        # live under /var/lib/nginx; keep a private nginx's in its own directory.
        (
            "http {\n",
            "http {\n"
            + "".join(f"    {kind}_temp_path {w}/{kind};\n" for kind in ("client_body", "proxy"))
            + "".join(f"    {kind}_temp_path {w}/{kind};\n" for kind in ("fastcgi", "uwsgi", "scgi")),
        ),
    ]
    for old, new in replacements:
        count = text.count(old)
        assert count == 1, f"{DEPLOY_CONF}: expected {old!r} once, found it {count} times"
        text = text.replace(old, new)
    matches = _UPSTREAM_SERVER.findall(text)
    assert len(matches) == 1, f"{DEPLOY_CONF}: expected one active `server 127.0.0.1:5000 ...;` line"
    assert upstreams, "at least one upstream"
    text = _UPSTREAM_SERVER.sub(
        lambda m: "\n".join(f"{m['indent']}server {u}{m['params']};" for u in upstreams), text
    )
    return text


def make_certificate(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for `ip` (and localhost) signed by it.
    Returns (ca/ca.crt, server.crt, server.key): clients trust ca.crt, nginx serves the other two.
    ca/ holds nothing else, so it can be a containers/image --cert-dir (which would take a *.key
    there for half of a client certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    unused = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    ca_usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True, encipher_only=False,
        decipher_only=False, **dict.fromkeys(unused, False),
    )  # fmt: skip
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("Berth e2e test CA"))
        .issuer_name(name("Berth e2e test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(ip))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca").mkdir(exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca" / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class Nginx(_Process):
    """nginx with deploy/nginx.conf on https://127.0.0.1:<port>, in front of `upstreams`.

    `ca` is the CA certificate clients verify it with; `cert_dir` holds only it (as ca.crt), for
    skopeo's and podman's --cert-dir. `access_log_path` is nginx's access log in the shipped
    `berth` format."""

    name = "nginx"

    def __init__(self, workdir: Path, upstreams: list[str]) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.upstreams = upstreams
        self.ca, self.cert, self.key = make_certificate(self.workdir / "tls")
        self.cert_dir = self.ca.parent
        self.access_log_path = self.workdir / "access.log"
        self.error_log_path = self.workdir / "error.log"
        self.conf_path = self.workdir / "nginx.conf"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def config(self) -> str:
        return render_config(self.workdir, self.port, self.upstreams, self.cert, self.key)

    def start(self):
        binary = require_binary("nginx", "/usr/sbin/nginx")
        self.conf_path.write_text(self.config())
        # -e: the error log before the configuration is read (Debian's default is under /var/log).
        self._spawn(
            [binary, "-c", self.conf_path, "-p", self.workdir, "-e", self.error_log_path, "-g", "daemon off;"]
        )
        deadline = time.monotonic() + 20
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                # nginx answers `/` itself (404): ready whatever the upstreams' state.
                requests.get(f"{self.url}/", timeout=1, verify=str(self.ca))
                return self
            except requests.RequestException as e:
                last = e
                time.sleep(0.1)
        self.stop()
        error_log = self.error_log_path.read_text() if self.error_log_path.exists() else ""
        raise RuntimeError(f"nginx did not start ({last!r}): {error_log}")

    def access_log(self) -> str:
        return self.access_log_path.read_text() if self.access_log_path.exists() else ""
