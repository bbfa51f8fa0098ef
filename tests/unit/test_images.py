"""The Dockerfiles, checked without a Docker engine (there is none here; tests/e2e builds them where
there is): what they COPY exists and is not excluded by .dockerignore, what they run is a console
script the package declares, the final stages run as a numeric non-root user on python:3.11-slim-bookworm
without build tools, and the package really builds from exactly the files the build stage copies.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {name: ROOT / "images" / name / "Dockerfile" for name in ("operator", "worker")}
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
BASE = "python:3.11-slim-bookworm"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|make|build-essential|apt-get|apk|cc|clang|git)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for k, args in self.instructions if k == keyword]


def parse(path: Path) -> list[Stage]:
    """Dockerfile -> stages of (INSTRUCTION, arguments), continuation lines joined, ARGs applied to FROM."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            # ${NAME}, and ${NAME:+word}: word when NAME is set and not empty (the digest's "@").
            words = re.sub(
                r"\$\{(\w+)(?::\+([^}]*))?\}",
                lambda m: args[m.group(1)] if m.group(2) is None else (m.group(2) if args[m.group(1)] else ""),
                rest,
            ).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def copy_sources(args: str) -> tuple[list[str], str, dict[str, str]]:
    """COPY [--flag=value ...] src... dest (shell or JSON form) -> (sources, dest, flags)."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return words[:-1], words[-1], flags


def exec_form(args: str) -> list[str]:
    # Exec (JSON) form only: the shell form would run through /bin/sh and lose signals (SIGTERM).
    assert args.startswith("["), f"use the exec form: {args}"
    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv) and argv
    return argv


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for the patterns used here: a path is out if it or a parent matches."""
    parts = Path(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern.lstrip("!").strip("/")
        regex = re.escape(p).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, c) for c in candidates):
            out = not negate
    return out


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_copied_paths_exist_and_are_in_the_build_context(image: str) -> None:
    patterns = dockerignore()
    copies = 0
    for stage in parse(IMAGES[image]):
        for args in stage.all("COPY") + stage.all("ADD"):
            sources, _, flags = copy_sources(args)
            if "from" in flags:
                continue  # from an earlier stage, not from the repository
            for src in sources:
                copies += 1
                assert not any(ch in src for ch in "*?["), f"{image}: name COPY sources exactly: {src}"
                assert (ROOT / src).exists(), f"{image}: COPY {src}: no such path in the repository"
                if src != ".":
                    assert not ignored(src, patterns), f"{image}: COPY {src} is excluded by .dockerignore"
    assert copies >= 2


def test_dockerignore_keeps_the_context_clean() -> None:
    patterns = dockerignore()
    for path in (".git", ".venv/bin/python", "operator/apwa/__pycache__/cli.cpython-311.pyc", ".pytest_cache/x"):
        assert ignored(path, patterns), f"{path} would be sent to the daemon and copied into the worker image"
    for path in ("pyproject.toml", "README.md", "operator/apwa/cli.py", "examples/wordcount.yaml", "charts/apwa"):
        assert not ignored(path, patterns), f"{path} is needed in the build context"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_commands_are_declared_console_scripts(image: str) -> None:
    stages = parse(IMAGES[image])
    final = stages[-1]
    commands = [exec_form(a) for a in final.all("ENTRYPOINT")] or [exec_form(a) for a in final.all("CMD")]
    assert commands, f"{image}: no ENTRYPOINT or CMD"
    venvs = {m.group(1) for s in stages for r in s.all("RUN") for m in re.finditer(r"-m venv [^&]*?(/\S+)", r)}
    for argv in commands:
        script = Path(argv[0])
        assert script.name in SCRIPTS, f"{image}: {argv[0]} is not a console script in pyproject.toml"
        if script.is_absolute():
            # The script must live where the build stage installs the package.
            assert str(script.parent) in {f"{v}/bin" for v in venvs}, f"{image}: {argv[0]} not in {venvs}"
    if image == "operator":
        assert final.all("ENTRYPOINT") and exec_form(final.all("ENTRYPOINT")[0])[1:] == ["operator"]
    else:
        assert exec_form(final.all("CMD")[0]) == ["apwa-example-wordcount", "shard"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_is_slim_non_root_and_without_build_tools(image: str) -> None:
    stages = parse(IMAGES[image])
    assert len(stages) >= 2, f"{image}: not multi-stage"
    assert all(s.base.partition("@")[0] == BASE for s in stages), [s.base for s in stages]
    final = stages[-1]
    users = final.all("USER")
    assert users, f"{image}: the final stage runs as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric: the kubelet can only check runAsNonRoot for a numeric user.
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), users[-1]
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run), f"{image}: build tooling in the final stage: {run}"
    copied_from = [copy_sources(a)[2].get("from") for a in final.all("COPY")]
    assert stages[0].name in copied_from, f"{image}: the final stage does not take the built venv"


def test_worker_image_carries_the_source_for_wordcount() -> None:
    final = parse(IMAGES["worker"])[-1]
    assert any(copy_sources(a)[:2] == (["."], "/src") for a in final.all("COPY"))
    env = " ".join(final.all("ENV"))
    assert re.search(r"\bWORDCOUNT_ROOT=/src\b", env), env
    # `python3 -c "from apwa import worker"` in the examples must find the venv's python first.
    assert re.search(r"\bPATH=/opt/apwa/bin:\$PATH\b", env), env


def test_package_builds_from_exactly_the_copied_files(tmp_path: Path) -> None:
    """The build stage copies only a few paths; the wheel built from just those has the package."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    build = parse(IMAGES["operator"])[0]
    for args in build.all("COPY"):
        sources, dest, _ = copy_sources(args)
        for src in sources:
            target = ctx / dest / Path(src).name if dest.endswith("/") else ctx / dest
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / src, target)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ctx)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("apwa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for module in ("apwa/cli.py", "apwa/worker.py", "apwa/controller/handlers.py", "apwa/examples/wordcount.py"):
        assert module in names, f"{module} missing from the wheel"
    for script in SCRIPTS:
        assert f"{script} = " in entry_points


def test_ignore_matching_is_not_vacuous() -> None:
    # The matcher must be able to say no and yes, or the checks above prove nothing.
    assert ignored("a/b/__pycache__/x.pyc", ["**/__pycache__"])
    assert not ignored("operator/apwa/cli.py", ["**/__pycache__", ".git"])
    assert ignored("build/lib", ["build"]) and not ignored("rebuild", ["build"])
    assert fnmatch.fnmatch("x.pyc", "*.py[cod]") and ignored("a/x.pyc", ["**/*.py[cod]"])


LOCK = ROOT / "images" / "requirements.lock"


def test_lock_pins_every_dependency_of_the_package_exactly() -> None:
    """images/requirements.lock: name==version lines, one per package, meeting pyproject's specifiers."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in re.sub(r"\\\n", " ", LOCK.read_text()).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(
            r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s;]*)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line.strip()
        )
        assert m, f"requirements.lock: not an exact pin with its hashes: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"requirements.lock: {name} twice"
        pins[name] = m.group(2)
    assert "apwa" not in pins and "pip" not in pins and "setuptools" not in pins
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in images/requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} does not meet {spec}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_installs_the_locked_versions(image: str) -> None:
    # The same lock as hack/images.sh installs, so both builds give the same versions.
    build = parse(IMAGES[image])[0]
    copied = [src for args in build.all("COPY") for src in copy_sources(args)[0]]
    assert "images/requirements.lock" in copied
    (run,) = [r for r in build.all("RUN") if "pip" in r]
    # Hash-checked from the lock, then the package alone (its dependencies are all in the lock).
    assert re.search(r"install .*--require-hashes --no-deps -r requirements\.lock\s+&&", run), run
    assert re.search(r"install [^&]*--no-deps \.$", run), run


def test_both_dockerfiles_pin_one_base_digest() -> None:
    # One place to bump: the same ARG in both files, empty or a sha256 (the release refuses empty).
    digests = {re.search(r"(?m)^ARG BASE_DIGEST=(.*)$", p.read_text()).group(1) for p in IMAGES.values()}
    (digest,) = digests
    assert digest == "" or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), digest
    for stages in map(parse, IMAGES.values()):
        assert {s.base for s in stages} == {f"{BASE}@{digest}" if digest else BASE}


def test_local_image_refs_are_content_addressed() -> None:
    """`hack/images.sh refs` names the four images without building anything."""
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "images.sh"), "refs"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert [w[0] for w in lines] == ["pause", "worker", "operator", "coredns"]
    version = re.search(r"github\.com/coredns/coredns (v\S+)", (ROOT / "testenv/go/coredns/go.mod").read_text())
    patterns = {
        "pause": r"apwa\.local/pause:[0-9a-f]{12}",
        "worker": r"apwa\.local/apwa-worker:[0-9a-f]{12}",
        "operator": r"apwa\.local/apwa-operator:[0-9a-f]{12}",
        "coredns": rf"apwa\.local/coredns:{re.escape(version.group(1))}-[0-9a-f]{{12}}",
    }
    for name, ref, archive in lines:
        assert re.fullmatch(patterns[name], ref), ref
        assert archive.endswith(f"/images/{ref.split('/')[1].replace(':', '-')}.oci.tar"), archive
    bad = subprocess.run(["bash", str(ROOT / "hack" / "images.sh"), "build", "nginx"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_coredns_listens_on_an_unprivileged_port() -> None:
    # The image runs CoreDNS as uid 65532 without NET_BIND_SERVICE; the Service maps 53 -> 1053.
    corefile = (ROOT / "testenv" / "go" / "coredns" / "Corefile").read_text()
    ports = re.findall(r"(?m)^\S*:(\d+)\s*\{", corefile)
    assert ports and all(int(p) >= 1024 for p in ports), ports
