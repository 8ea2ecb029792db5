"""Benchmark: ``dvc push`` and ``dvc pull`` of preprocessed volumes to an S3 server on 127.0.0.1.

Writes a fresh git and DVC repository whose one stage saves N random float16 volumes of
shape 48 x 96 x 96 (885 KB each, the default ``preprocess.shape``) into ``data/volumes``.
Then it starts moto's S3 server (``moto_server``, a test dependency) on a free loopback
port and measures:

- ``push``: ``dvc push`` of the volumes with each ``--jobs`` value, each into an empty bucket;
- ``pull``: ``dvc pull`` into a fresh ``git clone`` with each ``--jobs`` value;
- ``shards``: the same bytes saved as fewer, larger ``.npy`` files (``--shard-sizes``
  volumes per file), pushed and pulled with the default jobs, to separate the per-file
  cost from the per-byte cost;
- ``status``: with ``--status-volumes`` volumes in the cache, the first ``dvc repro``
  (hashing and caching), ``dvc status`` and a ``dvc repro`` with nothing to do, for a
  pipeline of the volumes stage and one stage that depends on the volume folder.

moto is a single Python process, so absolute transfer rates are those of this local server,
not of AWS S3; the per-file overhead of DVC and botocore is what carries over. Run from the
repository root with the test dependencies installed:

    python benchmarks/dvc_remote.py --work-dir benchmarks/work/dvc_remote --output result.json

The status run needs the most disk: two copies (workspace and cache) of the 5,000 volumes,
about 9 GB. moto keeps the objects of the bucket being pulled in memory, about 1.8 GB for
2,000 volumes. The work folder is deleted at the end unless ``--keep`` is given.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3_server import S3Server, aws_environment, running_s3_server

COMMAND_TIMEOUT_S = 3600.0
# DVC's default --jobs for S3 remotes is 4 x CPU cores.
DEFAULT_JOBS = 4 * (os.cpu_count() or 1)
VOLUME_SHAPE = (48, 96, 96)

MAKE_VOLUMES_SCRIPT = '''"""Write COUNT random float16 volumes in [0, 1], GROUP per .npy file."""
import os
import sys

import numpy as np

destination, count, group, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
shape = tuple(int(size) for size in sys.argv[5].split("x"))
os.makedirs(destination, exist_ok=True)
rng = np.random.default_rng(seed)
# Bit patterns 0 to 0x3C00 are the float16 values from 0 to 1.
for start in range(0, count, group):
    size = min(group, count - start)
    bits = rng.integers(0, 0x3C00, size=(size, *shape), dtype=np.uint16, endpoint=True)
    volume = bits.view(np.float16)
    np.save(os.path.join(destination, f"{start:06d}.npy"), volume if group > 1 else volume[0])
'''

DVC_YAML = """stages:
  volumes:
    cmd: python make_volumes.py data/volumes {count} {group} 0 {shape}
    deps:
      - make_volumes.py
    outs:
      - data/volumes
  consume:
    cmd: python -c "import os; print(len(os.listdir('data/volumes')))" > count.txt
    deps:
      - data/volumes
    outs:
      - count.txt:
          cache: false
"""


def environment(work_dir: Path, *, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "DVC_STUDIO_OFFLINE": "true",
            "DVC_SITE_CACHE_DIR": str(work_dir / "site-cache"),
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "benchmark",
            "GIT_AUTHOR_EMAIL": "benchmark@example.invalid",
            "GIT_COMMITTER_NAME": "benchmark",
            "GIT_COMMITTER_EMAIL": "benchmark@example.invalid",
        }
    )
    return env


def run(args: list[str], *, cwd: Path, env: dict[str, str]) -> float:
    """Run a command, raise with its output on failure, and return the seconds it took."""
    started = time.perf_counter()
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return elapsed


def make_repo(repo: Path, env: dict[str, str], *, count: int, group: int) -> float:
    """Create the repository, run the volumes stage, commit; return the repro seconds."""
    repo.mkdir(parents=True)
    run(["git", "init", "--quiet", "--initial-branch=main"], cwd=repo, env=env)
    run(["dvc", "init", "--quiet"], cwd=repo, env=env)
    run(["dvc", "config", "core.analytics", "false"], cwd=repo, env=env)
    (repo / "make_volumes.py").write_text(MAKE_VOLUMES_SCRIPT, encoding="utf-8")
    shape = "x".join(str(size) for size in VOLUME_SHAPE)
    dvc_yaml = DVC_YAML.format(count=count, group=group, shape=shape)
    (repo / "dvc.yaml").write_text(dvc_yaml, encoding="utf-8")

    seconds = run(["dvc", "repro", "--quiet"], cwd=repo, env=env)
    run(["git", "add", "--all"], cwd=repo, env=env)
    run(["git", "commit", "--quiet", "--message", "volumes"], cwd=repo, env=env)
    return seconds


def folder_stats(folder: Path) -> tuple[int, int]:
    files = [path for path in folder.iterdir() if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


def set_remote(repo: Path, env: dict[str, str], server: S3Server, bucket: str) -> None:
    run(
        [
            "dvc",
            "remote",
            "add",
            "--local",
            "--force",
            "--default",
            "bench",
            f"s3://{bucket}/cache",
        ],
        cwd=repo,
        env=env,
    )
    run(
        ["dvc", "remote", "modify", "--local", "bench", "endpointurl", server.endpoint_url],
        cwd=repo,
        env=env,
    )


def time_push(
    repo: Path, env: dict[str, str], server: S3Server, *, jobs: int, bucket: str
) -> float:
    server.create_bucket(bucket)
    set_remote(repo, env, server, bucket)
    return run(["dvc", "push", "--jobs", str(jobs)], cwd=repo, env=env)


def delete_bucket(server: S3Server, bucket: str) -> None:
    """Delete ``bucket`` and its objects, which moto keeps in memory up to about 5 MB each."""
    client = server.client()
    keys = server.list_keys(bucket)
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch})
    client.delete_bucket(Bucket=bucket)


def time_pull(
    repo: Path, clone: Path, env: dict[str, str], server: S3Server, *, jobs: int, bucket: str
) -> float:
    """``dvc pull`` into a fresh clone of ``repo`` that has no cache yet."""
    shutil.rmtree(clone, ignore_errors=True)
    run(["git", "clone", "--quiet", str(repo), str(clone)], cwd=repo.parent, env=env)
    set_remote(clone, env, server, bucket)
    seconds = run(["dvc", "pull", "--jobs", str(jobs)], cwd=clone, env=env)
    shutil.rmtree(clone)
    return seconds


def transfer_row(
    kind: str, seconds: float, *, files: int, size: int, jobs: int, layout: str
) -> dict:
    row = {
        "kind": kind,
        "layout": layout,
        "jobs": jobs,
        "files": files,
        "bytes": size,
        "seconds": round(seconds, 2),
        "ms_per_file": round(1000 * seconds / files, 2),
        "MB_per_s": round(size / 1e6 / seconds, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def measure_transfers(
    work_dir: Path, env: dict[str, str], server: S3Server, args: argparse.Namespace
) -> list[dict]:
    """Push and pull ``--volumes`` volumes as single files and as shards."""
    rows = []
    for group in (1, *args.shard_sizes):
        layout = "one volume per file" if group == 1 else f"{group} volumes per file"
        repo = work_dir / f"repo-group-{group}"
        make_repo(repo, env, count=args.volumes, group=group)
        files, size = folder_stats(repo / "data" / "volumes")
        jobs_values = args.jobs if group == 1 else [DEFAULT_JOBS]

        for index, jobs in enumerate(jobs_values):
            bucket = f"push-group-{group}-jobs-{jobs}"
            seconds = time_push(repo, env, server, jobs=jobs, bucket=bucket)
            rows.append(
                transfer_row("push", seconds, files=files, size=size, jobs=jobs, layout=layout)
            )
            if index < len(jobs_values) - 1:
                delete_bucket(server, bucket)
        for jobs in jobs_values:
            seconds = time_pull(repo, work_dir / "clone", env, server, jobs=jobs, bucket=bucket)
            rows.append(
                transfer_row("pull", seconds, files=files, size=size, jobs=jobs, layout=layout)
            )
        delete_bucket(server, bucket)
        shutil.rmtree(repo)
    return rows


def measure_status(work_dir: Path, env: dict[str, str], count: int) -> dict:
    """Time the first repro, ``dvc status`` and a no-op repro with ``count`` cached volumes."""
    repo = work_dir / "repo-status"
    first_repro_s = make_repo(repo, env, count=count, group=1)
    status_s = run(["dvc", "status"], cwd=repo, env=env)
    noop_repro_s = run(["dvc", "repro"], cwd=repo, env=env)
    row = {
        "volumes": count,
        "first_repro_s": round(first_repro_s, 2),
        "status_s": round(status_s, 2),
        "noop_repro_s": round(noop_repro_s, 2),
    }
    print(json.dumps(row), flush=True)
    shutil.rmtree(repo)
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=2000, help="volumes pushed and pulled")
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="+",
        default=[DEFAULT_JOBS, 32, 64],
        help="--jobs values of dvc push and dvc pull",
    )
    parser.add_argument(
        "--shard-sizes",
        type=int,
        nargs="*",
        default=[20, 100],
        help="volumes per .npy file in the sharded layouts",
    )
    parser.add_argument("--status-volumes", type=int, default=5000, help="0 skips the status run")
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/work/dvc_remote"))
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = args.work_dir.resolve()
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    env = aws_environment(scratch_dir=work_dir / "aws", base=environment(work_dir))

    report = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "aws_max_attempts": env["AWS_MAX_ATTEMPTS"],
    }
    try:
        with running_s3_server(log_path=work_dir / "moto_server.log") as server:
            report["transfers"] = measure_transfers(work_dir, env, server, args)
        if args.status_volumes:
            report["status"] = measure_status(work_dir, env, args.status_volumes)
        report["load_average"] = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
