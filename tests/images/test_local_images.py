"""The images built on this machine (hack/images.sh, no Docker) hold what the Dockerfiles declare.

The session fixture runs `hack/images.sh build` (cached by content: seconds when nothing changed,
a few minutes cold) and each test reads the OCI archive it produced: the image configuration
(User, Env, Entrypoint, Cmd, WorkingDir, ExposedPorts, Labels) against the Dockerfile's final
stage as tests/unit/test_images.py parses it, and the files of all layers: the console scripts,
the apwa package and every locked dependency at its locked version, no installer, /src equal to
the repository minus .dockerignore, owners and write bits. A failed build fails the tests. The
build needs root (debootstrap, chroot): CI has it; only a developer's non-root run is skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shlex
import stat
import subprocess
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from unit.test_images import IMAGES as DOCKERFILES
from unit.test_images import SCRIPTS, dockerignore, exec_form, ignored, parse

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "images.sh"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SITE = "opt/apwa/lib/python3.11/site-packages"
BUILD_TIMEOUT_S = float(os.environ.get("APWA_IMAGES_BUILD_TIMEOUT", "3000"))

# A cold build makes a Debian root, the venv and CoreDNS: minutes, longer than the default timeout.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 600)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in re.sub(r"\\\n", " ", (ROOT / "images" / "requirements.lock").read_text()).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.split()[0].partition("==")
            pins[canon(name)] = version
    return pins


@dataclass
class LocalImage:
    name: str
    ref: str
    archive: Path
    config: dict = field(default_factory=dict)
    layers: int = 0
    files: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # "usr/bin/python3" -> entry
    data: dict[str, bytes] = field(default_factory=dict)  # contents of the small files we look into

    def has(self, path: str) -> bool:
        return path.strip("/") in self.files


PYCS = {
    # A stdlib module from Debian (timestamp .pyc) and a module of the venv (hash-checked .pyc).
    "usr/lib/python3.11/__pycache__/os.cpython-311.pyc": "usr/lib/python3.11/os.py",
    "usr/lib/python3.11/json/__pycache__/decoder.cpython-311.pyc": "usr/lib/python3.11/json/decoder.py",
    f"{SITE}/apwa/__pycache__/cli.cpython-311.pyc": f"{SITE}/apwa/cli.py",
}


PACKAGES_IN_IMAGE = "usr/share/apwa/debian-packages.txt"


def keep_data(name: str) -> bool:
    return (
        name.startswith(("src/", "opt/apwa/bin/", "etc/coredns/"))
        or name in ("opt/apwa/pyvenv.cfg", "var/lib/dpkg/status", PACKAGES_IN_IMAGE)
        or name in PYCS
    )


def read_archive(name: str, ref: str, archive: Path) -> LocalImage:
    img = LocalImage(name, ref, archive)
    with tarfile.open(archive) as outer:
        index = json.load(outer.extractfile("index.json"))
        (desc,) = index["manifests"]
        assert desc["annotations"]["io.containerd.image.name"] == ref
        manifest = json.load(outer.extractfile(f"blobs/sha256/{desc['digest'][7:]}"))
        config_blob = outer.extractfile(f"blobs/sha256/{manifest['config']['digest'][7:]}").read()
        assert hashlib.sha256(config_blob).hexdigest() == manifest["config"]["digest"][7:]
        img.config = json.loads(config_blob)
        img.layers = len(manifest["layers"])
        assert len(img.config["rootfs"]["diff_ids"]) == img.layers
        for layer in manifest["layers"]:
            blob = outer.extractfile(f"blobs/sha256/{layer['digest'][7:]}")
            with gzip.GzipFile(fileobj=blob) as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                for member in tar:
                    path = member.name.strip("/").removeprefix("./")
                    base = path.rsplit("/", 1)[-1]
                    if base.startswith(".wh."):  # a whiteout: a later layer deletes a path
                        gone = path[: -len(base)] + base[4:]
                        for p in [p for p in img.files if p == gone or p.startswith(gone + "/")]:
                            del img.files[p]
                        continue
                    img.files[path] = member
                    if member.isreg() and keep_data(path):
                        img.data[path] = tar.extractfile(member).read()
    return img


@pytest.fixture(scope="session")
def built() -> dict[str, tuple[str, Path]]:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("building the worker/operator images needs root (debootstrap, chroot); CI runs as root")
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "build"], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hack/images.sh build did not finish in {BUILD_TIMEOUT_S:g}s: {exc}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"hack/images.sh build failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    lines = {}
    for line in proc.stdout.splitlines():
        name, ref, archive = line.split()
        lines[name] = (ref, Path(archive))
    assert sorted(lines) == ["coredns", "operator", "pause", "worker"], proc.stdout
    return lines


_cache: dict[str, LocalImage] = {}


def local(built: dict[str, tuple[str, Path]], name: str) -> LocalImage:
    if name not in _cache:
        _cache[name] = read_archive(name, *built[name])
    return _cache[name]


def declared(name: str) -> dict:
    """What the Dockerfile's final stage declares, in image-config terms (Docker's rules)."""
    final = parse(DOCKERFILES[name])[-1]
    out: dict = {"Env": {}, "Labels": {}, "ExposedPorts": set()}
    for keyword, args in final.instructions:
        if keyword in ("ENV", "LABEL"):
            target = out["Env"] if keyword == "ENV" else out["Labels"]
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                target[key] = value
        elif keyword == "USER":
            out["User"] = args
        elif keyword == "WORKDIR":
            out["WorkingDir"] = args
        elif keyword == "ENTRYPOINT":
            out["Entrypoint"] = exec_form(args)
            out["Cmd"] = None  # an ENTRYPOINT resets the base image's CMD
        elif keyword == "CMD":
            out["Cmd"] = exec_form(args)
        elif keyword == "EXPOSE":
            out["ExposedPorts"] |= {p if "/" in p else f"{p}/tcp" for p in args.split()}
    return out


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_config_is_what_the_dockerfile_declares(built, name: str) -> None:
    img = local(built, name)
    cfg, want = img.config["config"], declared(name)
    assert img.ref.startswith(f"apwa.local/apwa-{name}:")
    assert cfg.get("User") == want["User"] and want["User"] == "65532:65532"
    assert cfg.get("WorkingDir", "") == want.get("WorkingDir", "")
    assert cfg.get("Entrypoint") == want.get("Entrypoint")
    assert cfg.get("Cmd") == want["Cmd"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    for key, value in want["Env"].items():
        if "$PATH" in value:
            # Docker expands $PATH to the base image's: the rest must be a plain system PATH.
            prefix, _, _ = value.partition("$PATH")
            assert env[key].startswith(prefix) and "/usr/bin" in env[key][len(prefix) :], env[key]
        else:
            assert env.get(key) == value, (key, env.get(key))
    assert cfg.get("Labels", {}) == want["Labels"]
    assert set(cfg.get("ExposedPorts", {})) == want["ExposedPorts"]
    assert img.config["os"] == "linux" and img.config["architecture"] in ("amd64", "arm64")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_commands_exist_and_run_on_the_images_python(built, name: str) -> None:
    img = local(built, name)
    cfg = img.config["config"]
    argv = (cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])
    path = dict(e.split("=", 1) for e in cfg["Env"])["PATH"].split(":")
    command = argv[0] if argv[0].startswith("/") else next(f"{d}/{argv[0]}" for d in path if img.has(f"{d}/{argv[0]}"))
    assert img.has(command), f"{name}: {argv[0]} is not in the image"
    for script in SCRIPTS:
        entry = img.files[f"opt/apwa/bin/{script}"]
        assert entry.isreg() and entry.mode & 0o111, script
        assert img.data[f"opt/apwa/bin/{script}"].startswith(b"#!/opt/apwa/bin/python"), script
    # The venv's python is the image's own (Debian's 3.11), through the symlink venv made.
    python = img.files["opt/apwa/bin/python"]
    assert python.issym(), python.linkname
    assert img.has("usr/bin/python3.11") and b"version = 3.11." in img.data["opt/apwa/pyvenv.cfg"]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_site_packages_hold_exactly_apwa_and_the_locked_versions(built, name: str) -> None:
    img = local(built, name)
    dists = {}
    for path in img.files:
        m = re.fullmatch(rf"{SITE}/([^/]+)-([^-/]+)\.dist-info", path)
        if m:
            dists[canon(m.group(1))] = m.group(2)
    want = {**locked(), "apwa": PROJECT["version"]}
    assert dists == want, {"extra": set(dists) - set(want), "missing": set(want) - set(dists)}
    for module in ("apwa/cli.py", "apwa/worker.py", "apwa/examples/wordcount.py"):
        assert img.has(f"{SITE}/{module}"), module
    # Nothing can install packages at run time: no pip, setuptools or wheel anywhere.
    installers = [p for p in img.files if re.search(r"/(pip|setuptools|wheel)(-[^/]*\.(dist|egg)-info)?$", p)]
    assert not [p for p in installers if "/site-packages/" in p or "/dist-packages/" in p], installers
    assert not any(p.startswith("usr/share/python-wheels/") for p in img.files)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_venv_is_root_owned_and_read_only_for_the_user(built, name: str) -> None:
    img = local(built, name)
    venv = [(p, m) for p, m in img.files.items() if p == "opt/apwa" or p.startswith("opt/apwa/")]
    assert len(venv) > 1000
    for path, member in venv:
        assert (member.uid, member.gid) == (0, 0), path
        assert member.issym() or not member.mode & 0o022, f"{path}: {stat.filemode(member.mode)}"
    # The operator writes only to /tmp (the chart mounts an emptyDir there); the image has it.
    assert img.files["tmp"].isdir() and img.files["tmp"].mode & 0o1777 == 0o1777


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_compiled_python_stays_valid_in_the_image(built, name: str) -> None:
    """With PYTHONDONTWRITEBYTECODE and a read-only root nothing is ever recompiled to disk: a .pyc
    that does not match its source would make every start compile the stdlib and the dependencies."""
    img = local(built, name)
    for pyc, source in PYCS.items():
        header = img.data[pyc][:16]
        flags = int.from_bytes(header[4:8], "little")
        if source.startswith("usr/"):
            # Debian's timestamp .pyc: the layer keeps the .py's mtime as dpkg set it.
            assert flags == 0 and int.from_bytes(header[8:12], "little") == img.files[source].mtime, pyc
        else:
            # pip compiled with SOURCE_DATE_EPOCH: checked hashes, independent of mtimes.
            assert flags == 0b11, (pyc, flags)


def test_worker_src_is_the_repository_minus_dockerignore(built) -> None:
    img = local(built, "worker")
    patterns = dockerignore()
    want: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        for n in sorted(dirnames):
            rel = n if rel_dir == "." else f"{rel_dir}/{n}"
            if ignored(rel, patterns):
                dirnames.remove(n)
            else:
                want[rel] = Path(dirpath) / n
        for n in filenames:
            rel = n if rel_dir == "." else f"{rel_dir}/{n}"
            if not ignored(rel, patterns):
                want[rel] = Path(dirpath) / n
    have = {p.removeprefix("src/"): m for p, m in img.files.items() if p.startswith("src/")}
    assert set(have) == set(want), {"extra": set(have) - set(want), "missing": set(want) - set(have)}
    assert "examples/wordcount.yaml" in have and not any(p.startswith(".git/") for p in have)
    for rel, member in have.items():
        assert (member.uid, member.gid) == (0, 0), rel
        assert member.issym() or not member.mode & 0o022, f"{rel}: {stat.filemode(member.mode)}"
        if member.isreg():
            assert img.data[f"src/{rel}"] == want[rel].read_bytes(), f"/src/{rel} differs from the repository"
            assert member.mode & 0o111 == want[rel].stat().st_mode & 0o111, rel


def test_pause_image_is_one_static_binary(built) -> None:
    img = local(built, "pause")
    assert img.ref.startswith("apwa.local/pause:")
    assert img.config["config"]["Entrypoint"] == ["/pause"]
    assert [p for p, m in img.files.items() if not m.isdir()] == ["pause"]
    assert img.files["pause"].mode & 0o111 and img.files["pause"].size < 5_000_000


def test_coredns_image(built) -> None:
    img = local(built, "coredns")
    version = re.search(r"github\.com/coredns/coredns (v\S+)", (ROOT / "testenv/go/coredns/go.mod").read_text())
    assert version and img.ref.startswith(f"apwa.local/coredns:{version.group(1)}-")
    cfg = img.config["config"]
    assert cfg["Entrypoint"] == ["/coredns"] and cfg["Cmd"] == ["-conf", "/etc/coredns/Corefile"]
    assert cfg["User"] == "65532:65532"  # not root, no capability: so the Corefile listens on 1053
    assert set(cfg["ExposedPorts"]) == {"1053/tcp", "1053/udp"}
    assert re.search(r"(?m)^\.:1053 \{", img.data["etc/coredns/Corefile"].decode())
    assert sorted(p for p, m in img.files.items() if not m.isdir()) == ["coredns", "etc/coredns/Corefile"]


def test_a_second_build_is_a_no_op(built) -> None:
    before = {name: (ref, path.stat().st_mtime_ns) for name, (ref, path) in built.items()}
    proc = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = {
        line.split()[0]: (line.split()[1], Path(line.split()[2]).stat().st_mtime_ns)
        for line in proc.stdout.splitlines()
    }
    assert again == before
    assert "building" not in proc.stderr, proc.stderr
    refs = subprocess.run(["bash", str(SCRIPT), "refs"], capture_output=True, text=True, timeout=60, check=True)
    assert refs.stdout == proc.stdout


def test_a_failed_step_names_itself_and_its_log(built, tmp_path: Path) -> None:
    env = {**os.environ, "APWA_CACHE_DIR": str(tmp_path), "APWA_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "build", "operator"], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert "FAILED: debootstrap:" in proc.stderr, proc.stderr
    assert f"log: {tmp_path}/images/logs/debootstrap.log" in proc.stderr, proc.stderr
    assert not [m for m in Path("/proc/self/mounts").read_text().splitlines() if str(tmp_path) in m]


def test_layers_are_reproducible(tmp_path: Path) -> None:
    """The same inputs give byte-identical archives (sorted entries, fixed mtimes and owners, plain gzip)."""
    digests = []
    for run in ("a", "b"):
        env = {**os.environ, "APWA_CACHE_DIR": str(tmp_path / run)}
        proc = subprocess.run(
            ["bash", str(SCRIPT), "build", "pause"], capture_output=True, text=True, env=env, timeout=600, check=False
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (line,) = proc.stdout.splitlines()
        digests.append(hashlib.sha256(Path(line.split()[2]).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_the_images_run(built, tmp_path: Path) -> None:
    """The worker image's root, unpacked, runs its CMD as uid 65532 (chroot, no container runtime
    needed): wordcount counts the image's /src. The operator shares its first two layers (the
    Debian root and the venv), so its ENTRYPOINT is run there too."""
    from apwa.results.protocol import decode_result

    worker, operator = local(built, "worker"), local(built, "operator")
    assert operator.config["rootfs"]["diff_ids"] == worker.config["rootfs"]["diff_ids"][:2]
    root = tmp_path / "root"
    with tarfile.open(worker.archive) as outer:
        index = json.load(outer.extractfile("index.json"))
        manifest = json.load(outer.extractfile(f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))
        for layer in manifest["layers"]:
            blob = outer.extractfile(f"blobs/sha256/{layer['digest'][7:]}")
            with gzip.GzipFile(fileobj=blob) as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                tar.extractall(root, numeric_owner=True, filter="fully_trusted")  # our own image
    (root / "tmp/out").mkdir()
    os.chown(root / "tmp/out", 65532, 65532)

    def run_as_user(cfg: dict, argv: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        env = [*cfg["Env"], *(f"{k}={v}" for k, v in extra.items())]
        cmd = ["chroot", "--userspec=65532:65532", str(root), "/usr/bin/env", "-i", "-C", cfg.get("WorkingDir") or "/"]
        return subprocess.run([*cmd, *env, *argv], capture_output=True, text=True, timeout=120, check=False)

    cfg = worker.config["config"]
    extra = {"APWA_ITEM": '{"shard": 0, "count": 1}', "APWA_RESULT_PATH": "/tmp/out/result"}
    proc = run_as_user(cfg, (cfg.get("Entrypoint") or []) + cfg["Cmd"], extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = decode_result((root / "tmp/out/result").read_text())
    files = [p for p, m in worker.files.items() if p.startswith("src/") and m.isreg()]
    visible = [p for p in files if not any(part.startswith(".") for part in p.split("/")[1:-1])]
    assert result["files"] == len(visible) and result["words"] > 10_000, result

    cfg = operator.config["config"]
    proc = run_as_user(cfg, [*cfg["Entrypoint"], "--help"], {})
    assert proc.returncode == 0 and "--metrics-port" in proc.stdout, proc.stderr[-3000:]
    # Nothing in the image is writable by the user outside /tmp (readOnlyRootFilesystem aside).
    proc = run_as_user(cfg, ["sh", "-c", "touch /opt/apwa/x || touch /src/x || touch /usr/x || echo denied"], {})
    assert proc.stdout.strip() == "denied", proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_debian_package_versions_are_recorded(built, name: str) -> None:
    # Next to the archive and inside the image: `dpkg-query -W` of the root the image was made from.
    img = local(built, name)
    record = img.archive.with_name(img.archive.name.removesuffix(".oci.tar") + ".debian-packages.txt")
    text = record.read_text()
    lines = (line.split("\t") for line in text.splitlines())
    packages = {name.partition(":")[0]: version for name, version in lines}  # libc6:amd64 -> libc6
    assert re.fullmatch(r"3\.11\.\d+-\S+", packages["python3.11"]), packages.get("python3.11")
    assert {"python3", "python3-venv", "libc6", "libssl3"} <= set(packages)
    assert img.data[PACKAGES_IN_IMAGE].decode() == text
    # And it is what the image holds: the dpkg database of its root agrees on python3.11.
    status = img.data["var/lib/dpkg/status"].decode()
    m = re.search(r"(?m)^Package: python3\.11\n(?:[^\n]+\n)*?Version: (\S+)", status)
    assert m and m.group(1) == packages["python3.11"]
