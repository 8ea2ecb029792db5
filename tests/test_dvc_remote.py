"""The DVC remote against a real S3-compatible server on 127.0.0.1.

The pipeline runs once per session on a tiny sample in a temporary git repository. These
tests push its outputs to moto's S3 server and pull them into fresh clones. They also
interrupt a push, stop the server and take the credentials away. Every DVC command that
talks to the server runs under a timeout.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pipeline_repo import clone_pipeline_repo, pipeline_environment, run_command, run_dvc
from s3_server import S3Server, aws_environment, start_s3_server

# Registered as plugins, not imported by name, so the session fixtures `pipeline_repo` and
# `s3_server` have one definition and run once per session, however many modules use them.
pytest_plugins = ("pipeline_repo", "s3_server")
pytestmark = pytest.mark.slow

REMOTE = "storage"
NETWORK_TIMEOUT_S = 120.0
# A push to a stopped server must fail within this many seconds, with AWS_MAX_ATTEMPTS=1.
STOPPED_SERVER_LIMIT_S = 60.0
POLL_INTERVAL_S = 0.02
ALWAYS_CHANGED = {"listing": ["always changed"]}

_OUTPUTS_SCRIPT = """
import json, os
from dvc.repo import Repo
with Repo(".") as repo:
    print(json.dumps([
        {"stage": out.stage.name, "path": os.path.relpath(out.fs_path, repo.root_dir),
         "cached": out.use_cache, "md5": out.hash_info.value}
        for stage in repo.index.stages for out in stage.outs
    ]))
"""


@dataclass(frozen=True)
class Output:
    """One output of a pipeline stage, as DVC resolved it from dvc.yaml."""

    stage: str
    path: str
    cached: bool
    md5: str


@dataclass(frozen=True)
class RemoteLocation:
    bucket: str
    prefix: str


@dataclass(frozen=True)
class PushedRepo:
    repo: Path
    location: RemoteLocation
    push_output: str


def list_outputs(repo: Path) -> list[Output]:
    """Return every stage output of ``repo``, asking DVC itself in a subprocess."""
    result = run_command(
        ["python", "-c", _OUTPUTS_SCRIPT], cwd=repo, env=pipeline_environment(repo)
    )
    return [Output(**item) for item in json.loads(result.stdout)]


def remote_location(repo: Path, remote: str) -> RemoteLocation:
    """Split the ``s3://bucket/prefix`` URL of ``remote`` in ``repo``'s DVC config."""
    url = run_dvc(repo, "config", f"remote.{remote}.url").stdout.strip()
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if match is None:
        raise ValueError(f"remote {remote!r} has URL {url!r}; expected s3://BUCKET/PREFIX")
    return RemoteLocation(bucket=match.group(1), prefix=match.group(2).strip("/"))


def point_remote_at(repo: Path, remote: str, server: S3Server, url: str | None = None) -> None:
    """Set ``remote``'s endpoint (and URL, if given) in ``repo``'s git-ignored local config."""
    if url is not None:
        run_dvc(repo, "remote", "add", "--local", "--force", remote, url)
    run_dvc(repo, "remote", "modify", "--local", remote, "endpointurl", server.endpoint_url)


def object_key(md5: str) -> str:
    """Return the key of a DVC 3 cache object relative to the cache or remote root."""
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def expected_objects(repo: Path) -> set[str]:
    """Return the objects a push must upload: every cached output and every file of each
    cached folder, as listed in the folder's ``.dir`` object in the local cache."""
    cache = repo / ".dvc" / "cache"
    keys = set()
    for output in list_outputs(repo):
        if not output.cached:
            continue
        keys.add(object_key(output.md5))
        if output.md5.endswith(".dir"):
            entries = json.loads((cache / object_key(output.md5)).read_text(encoding="utf-8"))
            keys.update(object_key(entry["md5"]) for entry in entries)
    return keys


def remote_objects(server: S3Server, location: RemoteLocation) -> set[str]:
    prefix = f"{location.prefix}/" if location.prefix else ""
    return {key.removeprefix(prefix) for key in server.list_keys(location.bucket, prefix)}


def pushed_count(output: str) -> int:
    """Return N from DVC's "N files pushed" summary, or 0 from "Everything is up to date"."""
    match = re.search(r"(\d+) files? pushed", output)
    if match is None:
        if "Everything is up to date" in output:
            return 0
        raise ValueError(f"no push summary in DVC's output:\n{output}")
    return int(match.group(1))


def network_environment(repo: Path, scratch_dir: Path, **options) -> dict[str, str]:
    return aws_environment(scratch_dir=scratch_dir, base=pipeline_environment(repo), **options)


def assert_same_files(expected_root: Path, actual_root: Path, relative: str) -> None:
    """Assert that file or folder ``relative`` has the same files and bytes under both roots."""
    expected, actual = expected_root / relative, actual_root / relative
    if expected.is_file():
        assert actual.is_file(), f"{relative} missing in {actual_root}"
        assert actual.read_bytes() == expected.read_bytes(), f"{relative} differs"
        return

    expected_files = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file())
    actual_files = sorted(p.relative_to(actual) for p in actual.rglob("*") if p.is_file())
    assert actual_files == expected_files, f"files under {relative} differ"
    for name in expected_files:
        assert (actual / name).read_bytes() == (expected / name).read_bytes(), (
            f"{relative}/{name} differs"
        )


@contextlib.contextmanager
def background_push(repo: Path, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen]:
    """Run ``dvc push ARGS`` with one upload at a time in a process group of its own.

    The whole group is killed with SIGKILL when the ``with`` block exits while it still runs.
    """
    process = subprocess.Popen(
        ["dvc", "push", "--jobs", "1", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=NETWORK_TIMEOUT_S)


def wait_for_first_objects(
    server: S3Server, location: RemoteLocation, push: subprocess.Popen
) -> None:
    """Return once the bucket contains an object; fail if the push ends or stalls first."""
    deadline = time.monotonic() + NETWORK_TIMEOUT_S
    while server.count_objects(location.bucket) == 0:
        if push.poll() is not None:
            pytest.fail(f"dvc push ended before uploading anything:\n{push.communicate()[0]}")
        if time.monotonic() > deadline:
            pytest.fail(f"dvc push uploaded nothing within {NETWORK_TIMEOUT_S} s")
        time.sleep(POLL_INTERVAL_S)


@pytest.fixture(scope="module")
def pushed(
    pipeline_repo: Path,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> PushedRepo:
    """The session's pipeline outputs pushed to the committed default remote's bucket."""
    location = remote_location(pipeline_repo, REMOTE)
    s3_server.create_bucket(location.bucket)
    point_remote_at(pipeline_repo, REMOTE, s3_server)

    env = network_environment(pipeline_repo, tmp_path_factory.mktemp("aws"))
    result = run_dvc(pipeline_repo, "push", env=env, timeout_s=NETWORK_TIMEOUT_S)
    return PushedRepo(repo=pipeline_repo, location=location, push_output=result.stdout)


@pytest.fixture
def clone(pushed: PushedRepo, s3_server: S3Server, tmp_path: Path) -> Path:
    """A fresh git clone of the pushed repository, its remote pointed at the test server."""
    repo = clone_pipeline_repo(pushed.repo, tmp_path / "clone")
    point_remote_at(repo, REMOTE, s3_server)
    return repo


def test_push_uploads_every_cached_object(pushed: PushedRepo, s3_server: S3Server) -> None:
    expected = expected_objects(pushed.repo)

    assert expected, "the pipeline has no cached outputs"
    assert remote_objects(s3_server, pushed.location) == expected
    assert pushed_count(pushed.push_output) == len(expected)


def test_pull_restores_outputs_byte_identical(
    pushed: PushedRepo, clone: Path, tmp_path: Path
) -> None:
    env = network_environment(clone, tmp_path / "aws")

    run_dvc(clone, "pull", env=env, timeout_s=NETWORK_TIMEOUT_S)

    for output in list_outputs(pushed.repo):
        assert_same_files(pushed.repo, clone, output.path)
    # `listing` is always_changed, so it is the only stage `dvc status` can list.
    assert json.loads(run_dvc(clone, "status", "--json").stdout) == ALWAYS_CHANGED


def test_pull_of_preprocess_skips_other_stages(
    pushed: PushedRepo, clone: Path, tmp_path: Path
) -> None:
    env = network_environment(clone, tmp_path / "aws")
    outputs = [output for output in list_outputs(pushed.repo) if output.cached]

    run_dvc(clone, "pull", "preprocess", env=env, timeout_s=NETWORK_TIMEOUT_S)

    pulled = [output for output in outputs if output.stage == "preprocess"]
    assert pulled, "the preprocess stage has no cached outputs"
    for output in pulled:
        assert_same_files(pushed.repo, clone, output.path)
    for output in outputs:
        if output.stage != "preprocess":
            assert not (clone / output.path).exists(), f"{output.path} of {output.stage} pulled"


def test_interrupted_push_uploads_only_missing(
    pushed: PushedRepo,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    location = RemoteLocation(bucket=s3_server.create_bucket("interrupted-push"), prefix="cache")
    point_remote_at(pushed.repo, "interrupted", s3_server, url="s3://interrupted-push/cache")
    env = network_environment(pushed.repo, tmp_path / "aws")
    expected = expected_objects(pushed.repo)

    with background_push(pushed.repo, env, "--remote", "interrupted") as first_push:
        wait_for_first_objects(s3_server, location, first_push)
        os.killpg(first_push.pid, signal.SIGKILL)
        first_push.wait(timeout=NETWORK_TIMEOUT_S)
    uploaded_before_kill = remote_objects(s3_server, location)
    assert 0 < len(uploaded_before_kill) < len(expected), "the push was not interrupted partway"

    second_push = run_dvc(
        pushed.repo, "push", "--remote", "interrupted", env=env, timeout_s=NETWORK_TIMEOUT_S
    )
    assert pushed_count(second_push.stdout) == len(expected) - len(uploaded_before_kill)
    assert remote_objects(s3_server, location) == expected
    status = run_dvc(
        pushed.repo,
        "status",
        "--cloud",
        "--remote",
        "interrupted",
        env=env,
        timeout_s=NETWORK_TIMEOUT_S,
    )
    assert "Cache and remote 'interrupted' are in sync." in status.stdout


@pytest.mark.parametrize("stop_at", ["before_push", "during_push"])
def test_push_to_stopped_server_fails_fast(
    pushed: PushedRepo, tmp_path: Path, stop_at: str
) -> None:
    server = start_s3_server(log_path=tmp_path / "moto_server.log")
    try:
        location = RemoteLocation(bucket=server.create_bucket("stopped-server"), prefix="cache")
        point_remote_at(pushed.repo, "stopped", server, url="s3://stopped-server/cache")
        env = network_environment(pushed.repo, tmp_path / "aws", max_attempts=1)
        if stop_at == "before_push":
            server.stop()

        with background_push(pushed.repo, env, "--remote", "stopped") as push:
            if stop_at == "during_push":
                wait_for_first_objects(server, location, push)
                server.process.kill()
            try:
                output, _ = push.communicate(timeout=STOPPED_SERVER_LIMIT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"dvc push still running {STOPPED_SERVER_LIMIT_S} s after the stop")
    finally:
        server.stop()

    assert push.returncode != 0
    # Depending on the step DVC was in, the line reads "ERROR: failed to transfer ..." or
    # "ERROR: unexpected error - ...", each ending with botocore's connection error.
    assert re.search(r"^ERROR: .*Could not connect to the endpoint URL", output, re.MULTILINE)


def test_push_without_credentials_fails(pushed: PushedRepo, tmp_path: Path) -> None:
    env = network_environment(pushed.repo, tmp_path / "aws", credentials=False)

    result = run_dvc(pushed.repo, "push", env=env, timeout_s=NETWORK_TIMEOUT_S, check=False)

    assert result.returncode != 0
    assert "ERROR: unexpected error - Unable to locate credentials" in result.stderr
