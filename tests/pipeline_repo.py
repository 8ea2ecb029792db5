"""A temporary git repository with this project's pipeline, run once with ``dvc repro``.

:func:`build_pipeline_repo` copies the pipeline's files (``dvc.yaml``, ``params.yaml``,
``stages/``, ``rsna/``, the DVC config and the packaging files, never ``.venv`` or data)
into a new folder, overrides parameters, commits, runs ``dvc repro`` and commits the
result, so ``git clone`` of the folder gives a second checkout that can ``dvc pull``.

The session-scoped :func:`pipeline_repo` fixture runs the pipeline once per test session
with :data:`TINY_PARAMS`. Tests share that repository: they may read it, push it and
clone it, but must not change its workspace or commits.

Test modules load this file as a pytest plugin, often after importing its helpers, so it
opts out of assertion rewriting (it has no asserts): PYTEST_DONT_REWRITE.
"""

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Paths, relative to the project root, that make up the pipeline. Tests, benchmarks and
# docs stay behind; outputs under data/, models/, metrics/ and plots/ too, because the
# temporary repository must produce its own.
PIPELINE_PATHS: tuple[str, ...] = (
    ".dvc/.gitignore",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "requirements.txt",
    "rsna",
    "stages",
)

# The smallest pipeline that runs every stage: 20 series, small volumes, a narrow network
# and one epoch. With 12 series the test split has a single class for every label, and the
# curves stage fails because there is no ROC curve to draw.
TINY_PARAMS: dict[str, Any] = {
    "sample": {"series": 20},
    "preprocess": {"shape": [32, 32, 32], "spacing_mm": [4.0, 4.0, 4.0]},
    "pictures": {"count": 2},
    "train": {"epochs": 1, "batch_size": 4, "model": {"width": 8}, "num_workers": 0},
    "evaluate": {"batch_size": 4},
}

REPRO_TIMEOUT_S = 900.0
COMMAND_TIMEOUT_S = 120.0
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Pipeline Test",
    "GIT_AUTHOR_EMAIL": "pipeline-test@example.invalid",
    "GIT_COMMITTER_NAME": "Pipeline Test",
    "GIT_COMMITTER_EMAIL": "pipeline-test@example.invalid",
}


class CommandFailedError(RuntimeError):
    """A command run by these helpers exited with a non-zero status."""


def pipeline_environment(repo: Path, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for git, DVC and stage scripts run inside ``repo``.

    The copy of ``rsna`` in ``repo`` comes first on ``PYTHONPATH``, ahead of the editable
    install of the project, so stages run the copied code. DVC reads no user or system
    config, keeps its state database under ``repo/.dvc/tmp``, sends no analytics and
    checks for no updates. git reads no user config and commits with a fixed identity.
    """
    environment = dict(os.environ if base is None else base)
    python_bin = str(Path(sys.executable).parent)
    isolated = repo / ".dvc" / "tmp" / "isolated"
    python_path = [str(repo), environment.get("PYTHONPATH", "")]

    environment.update(
        {
            "PATH": os.pathsep.join([python_bin, environment.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(part for part in python_path if part),
            "DVC_NO_ANALYTICS": "1",
            "DVC_STUDIO_OFFLINE": "true",
            "DVC_GLOBAL_CONFIG_DIR": str(isolated / "global-config"),
            "DVC_SYSTEM_CONFIG_DIR": str(isolated / "system-config"),
            "DVC_SITE_CACHE_DIR": str(isolated / "site-cache"),
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "RSNA_NO_PROGRESS": "1",
            **GIT_IDENTITY,
        }
    )
    return environment


def run_command(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float = COMMAND_TIMEOUT_S,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd`` and return the result with stdout and stderr as text.

    Raises subprocess.TimeoutExpired after ``timeout_s`` seconds, and CommandFailedError
    with both output streams when ``check`` is true and the exit status is not 0.
    """
    result = subprocess.run(
        list(args),
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise CommandFailedError(
            f"{' '.join(args)} in {cwd} exited with status {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


def run_dvc(
    repo: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = COMMAND_TIMEOUT_S,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``dvc ARGS`` in ``repo`` with :func:`pipeline_environment` unless ``env`` is given."""
    environment = pipeline_environment(repo) if env is None else env
    return run_command(["dvc", *args], cwd=repo, env=environment, timeout_s=timeout_s, check=check)


def run_git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run_command(["git", *args], cwd=repo, env=pipeline_environment(repo))


def list_pipeline_files(source: Path, paths: Sequence[str] = PIPELINE_PATHS) -> list[Path]:
    """Return the files under ``paths`` that git tracks or would track in ``source``.

    Untracked files count unless a ``.gitignore`` excludes them, so work not yet committed
    is copied and caches such as ``__pycache__`` are not.
    """
    listing = run_command(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *paths],
        cwd=source,
        env=pipeline_environment(source),
    )
    names = sorted({name for name in listing.stdout.split("\0") if name})
    files = [Path(name) for name in names if (source / name).is_file()]
    if not any(path.name == "dvc.yaml" for path in files):
        raise FileNotFoundError(
            f"no dvc.yaml among the pipeline files of {source}; "
            "the project's pipeline must exist before a test can run it"
        )
    return files


def copy_pipeline_files(source: Path, destination: Path, files: Sequence[Path]) -> None:
    for relative in files:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target)


def override_params(params_file: Path, overrides: Mapping[str, Any]) -> None:
    """Replace values of ``params_file`` by the nested mapping ``overrides``.

    Mappings merge key by key at every level, so ``{"train": {"model": {"width": 8}}}``
    changes only ``train.model.width``. A key the file does not define raises KeyError,
    because a misspelt override would otherwise leave the default in place without
    notice. Comments are not kept.
    """
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    merged = _merge_existing(params, overrides, prefix="", source=params_file)
    params_file.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")


def _merge_existing(
    base: dict[str, Any], overrides: Mapping[str, Any], *, prefix: str, source: Path
) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if key not in base:
            raise KeyError(f"params key {prefix}{key} not in {source}; keys there: {sorted(base)}")
        if isinstance(value, Mapping) and isinstance(base[key], dict):
            merged[key] = _merge_existing(base[key], value, prefix=f"{prefix}{key}.", source=source)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_pipeline_repo(
    destination: Path,
    *,
    source: Path = PROJECT_ROOT,
    params: Mapping[str, Any] | None = None,
    paths: Sequence[str] = PIPELINE_PATHS,
    repro: bool = True,
    repro_timeout_s: float = REPRO_TIMEOUT_S,
) -> Path:
    """Create a git repository with the pipeline of ``source`` in ``destination`` and run it.

    ``params`` overrides ``params.yaml`` values, section by section (default
    :data:`TINY_PARAMS`; pass ``{}`` for the project's own values). The first commit contains
    the copied files and the overridden params. With ``repro`` true, ``dvc repro`` runs
    and a second commit adds ``dvc.lock``, the ``.gitignore`` files DVC wrote and the
    outputs that are not cached. Returns ``destination``.
    """
    files = list_pipeline_files(source, paths)
    destination.mkdir(parents=True, exist_ok=False)
    copy_pipeline_files(source, destination, files)
    override_params(destination / "params.yaml", TINY_PARAMS if params is None else params)

    run_git(destination, "init", "--quiet", "--initial-branch=main")
    commit_all(destination, "Copy the pipeline with test parameters")
    if repro:
        run_dvc(destination, "repro", timeout_s=repro_timeout_s)
        commit_all(destination, "Run the pipeline")
    return destination


def commit_all(repo: Path, message: str) -> None:
    run_git(repo, "add", "--all")
    run_git(repo, "commit", "--quiet", "--allow-empty", "--message", message)


def clone_pipeline_repo(repo: Path, destination: Path) -> Path:
    """``git clone`` ``repo`` into ``destination``: the code and dvc.lock, no DVC cache."""
    run_command(
        ["git", "clone", "--quiet", str(repo), str(destination)],
        cwd=destination.parent,
        env=pipeline_environment(destination),
    )
    return destination


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's pipeline run once with :data:`TINY_PARAMS` in a temporary git repository."""
    return build_pipeline_repo(tmp_path_factory.mktemp("pipeline") / "repo")
