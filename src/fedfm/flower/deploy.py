"""`fedfm flower ...`: run fedfm on Flower's deployment engine (a SuperLink + N SuperNodes).

  fedfm flower certs DIR [--host H ...]      CA + SuperLink TLS certificate (SANs: 127.0.0.1,
                                              localhost and every --host)
  fedfm flower keys DIR NAME                  a SuperNode's EC P-384 key pair (NAME, NAME.pub)
  fedfm flower superlink [--certs DIR] [--auth] [--port 9093]
  fedfm flower register KEY.pub [--superlink ADDR --ca DIR/ca.crt]   allow one SuperNode
  fedfm flower supernode --partition K --num-partitions N [--superlink ADDR] [--ca CA]
                         [--key PRIVATE_KEY] [--port P (default: a free local port)]
  fedfm flower run CONFIG [k=v ...] [--superlink ADDR] [--ca CA] [--stream] [--resume]

Without --certs/--ca everything runs with --insecure (plain HTTP: loopback and tests only).
`run` writes a Flower App (a pyproject.toml naming fedfm.flower.app's server and client, with
the RunConfig as run config `fedfm-config`) and a SuperLink connection in $FLWR_HOME/config.toml,
then calls `flwr run`. Every command sets the variables that keep Flower offline, runs Flower
in its own process group and stops that whole group on SIGTERM/SIGINT/SIGHUP (procs.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fedfm.core.errors import ConfigError
from fedfm.flower import require_flwr
from fedfm.flower.procs import free_port, supervise

DEFAULT_LINK = "127.0.0.1:9093"


def flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


# ---- credentials (cryptography ships with flwr) ----------------------------------------------
def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def make_certs(folder: str | Path, hosts: tuple[str, ...] = ()) -> dict[str, Path]:
    """A self-signed CA and a SuperLink certificate signed by it (prototyping; use your own PKI
    in production). Returns the paths: ca.crt, server.pem, server.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject, issuer, key, sign_key, ca: bool, sans=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(sign_key, hashes.SHA256())

    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    ca_key, srv_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = cert(name("fedfm CA"), name("fedfm CA"), ca_key, ca_key, True)
    sans = []
    for h in ("127.0.0.1", "::1", "localhost", *hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    srv = cert(name("fedfm SuperLink"), ca.subject, srv_key, ca_key, False, sans)
    pem = serialization.Encoding.PEM
    key_pem = lambda k: k.private_bytes(pem, serialization.PrivateFormat.PKCS8,  # noqa: E731
                                        serialization.NoEncryption())
    paths = {"ca": out / "ca.crt", "cert": out / "server.pem", "key": out / "server.key"}
    _write(paths["ca"], ca.public_bytes(pem))
    _write(out / "ca.key", key_pem(ca_key), private=True)
    _write(paths["cert"], srv.public_bytes(pem))
    _write(paths["key"], key_pem(srv_key), private=True)
    return paths


def make_node_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's EC P-384 key pair in OpenSSH format: (private, public = private + .pub)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = out / name, out / f"{name}.pub"
    _write(priv, key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), private=True)
    _write(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH))
    return priv, pub


# ---- command lines ---------------------------------------------------------------------------
def _tls(ca: str | None, flag: str) -> list[str]:
    return [flag, str(Path(ca).resolve())] if ca else ["--insecure"]


def superlink_cmd(host: str = "127.0.0.1", port: int = 9093, certs: str | None = None,
                  auth: bool = False, database: str | None = None) -> list[str]:
    cmd = ["flower-superlink", "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if certs:
        c = Path(certs).resolve()
        cmd += ["--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "server.pem"),
                "--ssl-keyfile", str(c / "server.key")]
    else:
        cmd.append("--insecure")
    if auth:
        if not certs:
            raise ConfigError("SuperNode authentication needs TLS: pass --certs DIR "
                              "(create it with `fedfm flower certs DIR`).")
        cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    return cmd


def supernode_cmd(partition: int, num_partitions: int, superlink: str = DEFAULT_LINK,
                  ca: str | None = None, key: str | None = None,
                  port: int | None = None, timing: tuple | None = None) -> list[str]:
    """port: the node's local runtime API port (127.0.0.1 only); None = a free one, so several
    SuperNodes run on one machine without flags. timing: (heartbeat_s, poll_s, retry_max_s),
    None entries = Flower's defaults (fedfm.flower.node_timing)."""
    from fedfm.flower import node_timing

    if not 0 <= partition < num_partitions:
        raise ConfigError(f"--partition must be in 0..{num_partitions - 1}, got {partition}.")
    if port is None:
        port = free_port()
    cmd = ["flower-supernode", "--superlink", superlink, "--host", "127.0.0.1",
           "--port", str(port), *_tls(ca, "--root-certificates"),
           "--node-config", f"partition-id={partition} num-partitions={num_partitions}"]
    if key:
        if not ca:
            raise ConfigError("SuperNode authentication needs TLS: pass --ca CA_CERT too.")
        cmd += ["--auth-supernode-private-key", str(Path(key).resolve())]
    return node_timing.command(*(timing or (None, None, None)), cmd)


def write_connection(superlink: str = DEFAULT_LINK, ca: str | None = None) -> str:
    """Add (or update) a SuperLink connection in $FLWR_HOME/config.toml; returns its name."""
    import tomli_w

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = flwr_home() / "config.toml"
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    name = "fedfm-" + superlink.replace(":", "-").replace(".", "-").replace("[", "").replace("]", "")
    conn: dict = {"address": superlink}
    if ca:
        conn["root-certificates"] = str(Path(ca).resolve())
    else:
        conn["insecure"] = True
    data.setdefault("superlink", {})[name] = conn
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return name


def write_app(cfg, folder: str | Path, resume: bool = False) -> Path:
    """A Flower App folder whose components are fedfm's and whose run config is `cfg`
    (resume: the ServerApp continues the run in cfg.out from its last checkpoint)."""
    from dataclasses import replace

    cfg = replace(cfg, out=str(Path(cfg.out).resolve()))  # the ServerApp may run elsewhere
    text = json.dumps(cfg.to_dict(), default=str)
    if "'''" in text:
        raise ConfigError("the config contains ''' which a Flower app config cannot carry.")
    app = Path(folder)
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedfmrun"
version = "1.0.0"
description = "fedfm run {cfg.algorithm} (generated by `fedfm flower run`)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedfm"

[tool.flwr.app.components]
serverapp = "fedfm.flower.app:server"
clientapp = "fedfm.flower.app:client"

[tool.flwr.app.config]
fedfm-config = '''{text}'''
fedfm-resume = {"true" if resume else "false"}
""")
    return app


def _exec(cmd: list[str]) -> int:
    """Run a Flower command; SIGTERM/SIGINT stop it and everything it started (procs.py)."""
    return supervise(cmd)


def cmd_run(args: argparse.Namespace) -> int:
    from fedfm.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.resume:
        from fedfm.flower.app import check_resumable

        check_resumable(cfg.algorithm)
    app = write_app(cfg, flwr_home() / "fedfm-apps" / cfg.hash(), args.resume)
    name = write_connection(args.superlink, args.ca)
    cmd = ["flwr", "run", str(app), name]
    if not args.stream:  # flwr run returns once the run is submitted
        return _exec(cmd)
    run_ids: list[str] = []

    def on_line(line: str) -> None:
        m = re.search(r"Successfully started run (\d+)", line)
        if m:
            run_ids.append(m.group(1))

    def on_stop() -> None:  # Ctrl-C / SIGTERM while streaming stops the run too
        for rid in run_ids:
            print(f"fedfm: stopping Flower run {rid}", flush=True)
            try:
                subprocess.run(["flwr", "stop", rid, name], timeout=60, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                print(f"fedfm: `flwr stop {rid} {name}` did not answer", flush=True)

    return supervise(cmd + ["--stream"], on_line=on_line, on_stop=on_stop)


def dispatch(args: argparse.Namespace) -> int:
    require_flwr()
    w = args.what
    if w == "certs":
        paths = make_certs(args.dir, tuple(args.host))
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    if w == "keys":
        priv, pub = make_node_keys(args.dir, args.name)
        print(f"private: {priv}\npublic:  {pub}")
        return 0
    if w == "superlink":
        return _exec(superlink_cmd(args.host, args.port, args.certs, args.auth, args.database))
    if w == "supernode":
        return _exec(supernode_cmd(args.partition, args.num_partitions, args.superlink,
                                   args.ca, args.key, args.port,
                                   (args.heartbeat_s, args.poll_s, args.retry_max_s)))
    if w == "register":
        name = write_connection(args.superlink, args.ca)
        return _exec(["flwr", "supernode", "register", str(Path(args.public_key).resolve()), name])
    return cmd_run(args)


def add_parser(sub) -> None:
    """`fedfm flower ...` subcommands (argparse)."""
    p = sub.add_parser("flower", help="run on Flower's deployment engine (SuperLink/SuperNodes)")
    fl = p.add_subparsers(dest="what", required=True)
    c = fl.add_parser("certs", help="self-signed CA + SuperLink TLS certificate")
    c.add_argument("dir")
    c.add_argument("--host", action="append", default=[], help="extra SAN (name or IP)")
    k = fl.add_parser("keys", help="a SuperNode's EC key pair (for authentication)")
    k.add_argument("dir")
    k.add_argument("name")
    s = fl.add_parser("superlink", help="start a SuperLink")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9093)
    s.add_argument("--certs", help="folder from `fedfm flower certs` (TLS); default insecure")
    s.add_argument("--auth", action="store_true", help="only registered SuperNodes may connect")
    s.add_argument("--database", help="state file (default: in memory)")
    n = fl.add_parser("supernode", help="start a SuperNode serving one fedfm client")
    n.add_argument("--partition", type=int, required=True, help="this node's client id")
    n.add_argument("--num-partitions", type=int, required=True, help="data.num_clients")
    n.add_argument("--port", type=int, default=None,
                   help="the node's local runtime API port on 127.0.0.1 (default: a free one)")
    for flag, what in (("--heartbeat-s", "heartbeat interval (Flower: 30; a crashed node is "
                                         "declared unavailable after 2x this; 10-1800)"),
                       ("--poll-s", "pause between task requests while idle (Flower: 3)"),
                       ("--retry-max-s", "longest pause between reconnect attempts (Flower: 20)")):
        n.add_argument(flag, type=float, default=None, help=what)
    r = fl.add_parser("register", help="allow a SuperNode's public key (SuperLink with --auth)")
    r.add_argument("public_key")
    x = fl.add_parser("run", help="start a fedfm run on a SuperLink")
    x.add_argument("config")
    x.add_argument("overrides", nargs="*")
    x.add_argument("--stream", action="store_true", help="stream the run's log")
    x.add_argument("--resume", action="store_true",
                   help="continue the run in `out` from its last checkpoint (after a crash)")
    for q in (n, r, x):
        q.add_argument("--superlink", default=DEFAULT_LINK, help="SuperLink address host:port")
        q.add_argument("--ca", help="CA certificate (ca.crt) to verify the SuperLink; "
                                    "default insecure")
    n.add_argument("--key", help="this SuperNode's private key (authentication)")
    p.set_defaults(func=dispatch)
