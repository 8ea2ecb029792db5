"""A real S3-compatible server on 127.0.0.1 for the data-versioning tests.

:func:`start_s3_server` runs moto's standalone server (``moto_server`` from the
``moto[server]`` test dependency) on a free loopback port and waits until it accepts
connections. The session-scoped :func:`s3_server` fixture starts one server for the whole
test session and stops it, by its process id, at the end. moto keeps every bucket and
object in memory, so a stopped server loses them, and it accepts any credentials, so wrong
credentials cannot be tested against it.

:func:`aws_environment` builds the environment for DVC and boto3 subprocesses: dummy
credentials (or none), the endpoint never taken from the caller's AWS settings, bounded
retries and no probes of the cloud metadata address.

Test modules load this file as a pytest plugin, often after importing its helpers, so it
opts out of assertion rewriting (it has no asserts): PYTEST_DONT_REWRITE.
"""

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

REGION = "us-east-1"
# moto accepts any key pair; these values only have to be present.
DUMMY_ACCESS_KEY_ID = "testing"
DUMMY_SECRET_ACCESS_KEY = "testing"
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# botocore's attempts per request, the first one included. With the default legacy retry
# mode (5 attempts, random exponential backoff) a push whose server dies keeps retrying
# every remaining file and does not exit for many minutes; 1 makes it fail in seconds.
TEST_MAX_ATTEMPTS = 1
# Variables that would hand the caller's real credentials, profile or endpoint to a test.
_CALLER_VARIABLE_PREFIXES = ("AWS_", "BOTO_")


@dataclasses.dataclass
class S3Server:
    """A running ``moto_server`` process serving the S3 API on ``127.0.0.1:port``."""

    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        """Return a boto3 S3 client for this server, independent of the process environment."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (3 to 63 characters) and return the name."""
        self.client().create_bucket(Bucket=name)
        return name

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Return every object key in ``bucket`` under ``prefix``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def count_objects(self, bucket: str, prefix: str = "") -> int:
        return len(self.list_keys(bucket, prefix))

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Terminate the server process, then kill it if it has not exited in time."""
        if not self.is_running():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def moto_server_command() -> str:
    """Return the path of ``moto_server``, preferring the one beside this Python."""
    beside_python = Path(sys.executable).with_name("moto_server")
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("moto_server")
    if found is None:
        raise FileNotFoundError(
            "moto_server not found beside the Python interpreter or on PATH; "
            "install the test dependencies: pip install -r requirements-test.txt"
        )
    return found


def start_s3_server(*, log_path: Path, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> S3Server:
    """Start ``moto_server`` on a free loopback port and wait until it accepts connections.

    The server writes one log line per request to ``log_path``. Raises RuntimeError with
    the end of that log when the process exits or does not listen within
    ``startup_timeout_s`` seconds.
    """
    port = find_free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = S3Server(process=process, port=port, log_path=log_path)

    try:
        _wait_until_listening(server, timeout_s=startup_timeout_s)
    except RuntimeError:
        server.stop()
        raise
    return server


def _wait_until_listening(server: S3Server, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.is_running():
            raise RuntimeError(
                f"moto_server exited with status {server.process.returncode} before listening "
                f"on port {server.port}; its log ends with:\n{_log_tail(server.log_path)}"
            )
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"moto_server did not accept connections on port {server.port} within {timeout_s} s; "
        f"its log ends with:\n{_log_tail(server.log_path)}"
    )


def _log_tail(log_path: Path, characters: int = 2000) -> str:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace")[-characters:]
    except FileNotFoundError:
        return "(no log written)"


@contextlib.contextmanager
def running_s3_server(*, log_path: Path) -> Iterator[S3Server]:
    """Start a server for the ``with`` block and stop it when the block exits."""
    server = start_s3_server(log_path=log_path)
    try:
        yield server
    finally:
        server.stop()


def aws_environment(
    *,
    scratch_dir: Path,
    credentials: bool = True,
    max_attempts: int = TEST_MAX_ATTEMPTS,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Return an environment for AWS clients that talk only to the test server.

    Every ``AWS_*`` and ``BOTO_*`` variable of ``base`` (default: ``os.environ``) is
    dropped. The shared credentials and config files, and the legacy boto config, point at
    empty files in ``scratch_dir``, so no file in the user's home directory is read.
    With ``credentials=False`` no credentials remain anywhere, which makes botocore
    raise "Unable to locate credentials". ``AWS_EC2_METADATA_DISABLED`` stops botocore
    from asking the cloud metadata address for credentials.
    """
    environment = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if not name.startswith(_CALLER_VARIABLE_PREFIXES)
    }

    scratch_dir.mkdir(parents=True, exist_ok=True)
    empty_file = scratch_dir / "empty-aws-file"
    empty_file.touch()
    environment.update(
        {
            "AWS_SHARED_CREDENTIALS_FILE": str(empty_file),
            "AWS_CONFIG_FILE": str(empty_file),
            "BOTO_CONFIG": str(empty_file),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_MAX_ATTEMPTS": str(max_attempts),
            # A proxy set for the internet must not intercept requests to the loopback server.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    if credentials:
        environment["AWS_ACCESS_KEY_ID"] = DUMMY_ACCESS_KEY_ID
        environment["AWS_SECRET_ACCESS_KEY"] = DUMMY_SECRET_ACCESS_KEY
    return environment


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto S3 server on a free loopback port for the whole test session."""
    log_path = tmp_path_factory.mktemp("s3-server") / "moto_server.log"
    with running_s3_server(log_path=log_path) as server:
        yield server
