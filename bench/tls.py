"""What TLS costs the server: hello world over https with wrk, with keep-alive (the record layer
per request) and with Connection: close (a full handshake per request), on both event loops.

A throwaway CA and server certificate (ECDSA P-256) are made at start with `cryptography`.
Server CPU (utime + stime of the master and its worker, from /proc) is divided by the requests
wrk completed, as in bench/bench.py; the server runs on core 0 and wrk on core 1.

    python -m bench.tls                          # the checkout's src/
    python -m bench.tls --src /tmp/old/src       # another tree, to compare before and after
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.bench import (
    CLIENT_CORE,
    CLK_TCK,
    ROOT,
    SERVER_CORE,
    free_port,
    run_wrk,
    stop_process,
    tree_cpu_ticks,
)

BENCH = Path(__file__).resolve().parent


def make_pair(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def start_server(
    src: Path, loop: str, cert: Path, key: Path, port: int, log: Path
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "hardserve", "bench.apps:hello", "--bind", f"127.0.0.1:{port}"]
    argv += ["--threads", "8", "--loop", loop, "--certfile", str(cert), "--keyfile", str(key)]
    argv += ["--keepalive-timeout-s", "30"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hardserve exited: {log.read_text()}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                context.wrap_socket(raw),
            ):
                return process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("hardserve did not start")


def measure(process: subprocess.Popen[bytes], port: int, mode: str, seconds: int) -> float:
    """Server CPU in microseconds per request for one wrk run."""
    argv = ["wrk", "-t1", "-c16", f"-d{seconds}s", "--timeout", "5s"]
    argv += ["-s", str(BENCH / "report.lua")]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    argv.append(f"https://127.0.0.1:{port}/")
    time.sleep(0.3)
    before = tree_cpu_ticks(process.pid)
    summary, _ = run_wrk(argv)
    after = tree_cpu_ticks(process.pid)
    errors = sum(summary[f"{kind}_errors"] for kind in ("connect", "read", "write", "status"))
    if errors:
        print(f"  ({errors} errors)", file=sys.stderr)
    return (after - before) / CLK_TCK * 1e6 / max(summary["requests"], 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the hardserve tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--loops", default="uvloop,asyncio")
    options = parser.parse_args()
    print(f"server on core {SERVER_CORE}, wrk on core {CLIENT_CORE}, src {options.src}")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_pair(Path(tmp))
        for loop in options.loops.split(","):
            port = free_port()
            process = start_server(options.src, loop, cert, key, port, Path(tmp) / "log")
            try:
                measure(process, port, "keep-alive", 1)  # warm-up
                for mode in ("keep-alive", "close"):
                    figures = [
                        measure(process, port, mode, options.seconds) for _ in range(options.rounds)
                    ]
                    print(
                        f"{loop:8} {mode:10} median {statistics.median(figures):7.1f} µs/req "
                        f"server CPU  (runs: {', '.join(f'{f:.1f}' for f in figures)})"
                    )
            finally:
                stop_process(process, 15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
