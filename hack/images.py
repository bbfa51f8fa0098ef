"""Builds the project's container images on this machine, without Docker and without a registry.

Called by hack/images.sh (see there for the commands). Images:

  pause     the pod sandbox image: images/pause (a static Go program), nothing else
  worker    images/worker/Dockerfile's contents: Debian bookworm's python3 + /opt/apwa venv + /src
  operator  images/operator/Dockerfile's contents: Debian bookworm's python3 + /opt/apwa venv
  coredns   CoreDNS from Go modules (testenv/go/coredns), nothing else

Each image is an OCI image layout packed in a tar ("OCI archive"), which `ctr images import`
reads. The tag is a hash of every build input (sources, the lock, versions, this script and
images.sh), so a changed input gives a new ref and an unchanged one finds its archive and does
nothing.

Why a Python OCI writer and not umoci: the layers must be byte-for-byte reproducible so that the
same inputs give the same digests (sorted entries, fixed mtimes, numeric owners, no host user
names, gzip without timestamps), which umoci's repack does not give (it records the files' real
mtimes, the rootless mapping of the unpacking user and a creation time in the config), and an OCI
image is only tar + gzip + sha256 + three small JSON documents: about 100 lines here, no daemon,
no unpack/repack round trip, nothing to install on a fresh machine.

The worker/operator recipe follows the Dockerfiles. The configuration (Env, User, WorkingDir,
Entrypoint, Cmd, ExposedPorts, Labels) is read from the Dockerfile's final stage, on top of what
python:3.11-slim sets (PATH, LANG, CMD ["python3"]); the filesystem is made by the steps below,
and any COPY or RUN in the final stage that this script does not know how to reproduce is an
error (so the two builds cannot drift apart silently):

  build stage   a copy of the Debian root (debootstrap), `python3 -m venv --without-pip /opt/apwa`,
                then pip (Debian's own pip wheel, run from the wheel) installs the project wheel and
                the wheels of images/requirements.lock with --no-index: both were made on the host
                (pip wheel / pip download for cp311 manylinux x86_64), so the chroot needs no network.
  final stage   layer 1: the Debian root, trimmed (docs except copyright, man pages, locales, apt
                lists and caches, logs, the pip/setuptools wheels: nothing can install packages),
                plus /usr/share/apwa/debian-packages.txt: `dpkg-query -W` of that root (package,
                tab, version), also written next to the archive as <archive>.debian-packages.txt;
                layer 2: /opt/apwa from the build stage; worker only, layer 3: /src = the repository
                files minus .dockerignore, owned by root, without write bits for group/other.

The lock (images/requirements.lock) carries the sha256 of every wheel of each pinned version, so
pip checks every downloaded wheel against it (hash-checking mode) here and in the Dockerfiles.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("APWA_CACHE_DIR") or Path.home() / ".cache" / "apwa")
IMAGES = CACHE / "images"
LOGS = IMAGES / "logs"
BLOBS = IMAGES / "blobs" / "sha256"
REGISTRY = "apwa.local"
NAMES = ("pause", "worker", "operator", "coredns")

# Fixed mtime of every file this script puts into a layer (except the Debian root, see below).
EPOCH = 946684800  # 2000-01-01T00:00:00Z
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
# Bump when the debootstrap step changes in a way the key below does not show.
BASE_RECIPE = "1"
# The python:3.11-slim configuration that the Dockerfiles build on (their FROM).
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
BASE_CMD = ["python3"]
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    def __init__(self, what: str, logfile: Path | None = None):
        super().__init__(what)
        self.what, self.logfile = what, logfile


def run(step: str, cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Runs cmd with its output appended to logs/<step>.log; a failure names the step and the log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    logfile = LOGS / f"{step}.log"
    with logfile.open("a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise Failed(f"{step}: `{shlex.join(cmd)[:300]}` exited {proc.returncode}", logfile)


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def files_digest(paths: list[tuple[str, Path]]) -> str:
    """A hash over (name, mode, content or link target) of each file, in order."""
    h = hashlib.sha256()
    for name, p in paths:
        st = p.lstat()
        h.update(f"{name}\0{stat.S_IMODE(st.st_mode) & 0o755:o}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(b"L" + os.readlink(p).encode())
        elif stat.S_ISDIR(st.st_mode):
            h.update(b"D")
        else:
            h.update(b"F" + hashlib.sha256(p.read_bytes()).digest())
        h.update(b"\0")
    return h.hexdigest()


SCRIPT_HASH = sha(Path(__file__).read_bytes() + (ROOT / "hack" / "images.sh").read_bytes())


# --- .dockerignore (Docker's rule, the same as tests/unit/test_images.py checks) ---------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    p = pattern.lstrip("!").strip("/")
    regex = re.escape(p).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.compile(regex.replace(r"\[", "[").replace(r"\]", "]"))


def context_files() -> list[tuple[str, Path]]:
    """The build context as Docker sends it: the work tree minus .dockerignore, sorted, with dirs."""
    patterns = [(p.startswith("!"), _pattern_regex(p)) for p in dockerignore_patterns()]
    negations = any(neg for neg, _ in patterns)

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        out = False
        for negate, regex in patterns:
            if any(regex.fullmatch(c) for c in candidates):
                out = not negate
        return out

    found: list[tuple[str, Path]] = []

    def walk(d: Path, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            r = f"{rel}{name}"
            p = d / name
            is_dir = p.is_dir() and not p.is_symlink()
            if ignored(r):
                if is_dir and negations:
                    walk(p, r + "/")  # a later "!" pattern may take something inside back
                continue
            found.append((r, p))
            if is_dir:
                walk(p, r + "/")

    walk(ROOT, "")
    return found


# --- layers and OCI archives --------------------------------------------------------------------


class _Sink(io.RawIOBase):
    """A write-only stream that hashes and counts what goes through it."""

    def __init__(self, out):
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.hash.update(b)
        self.size += len(b)
        self.out.write(b)
        return len(b)


@dataclass
class Entry:
    """One file of a layer: name inside the image (no leading /), and where its bytes come from."""

    name: str
    path: Path | None = None  # None: a directory made up here (data None) or a file from data
    data: bytes | None = None
    mode: int = 0o755
    uid: int | None = None  # None: the source file's owner
    gid: int | None = None
    mtime: int | None = EPOCH  # None: the source file's mtime
    strip_write: bool = False  # drop group/other write bits


@dataclass
class Layer:
    digest: str  # sha256 of the gzip blob
    diff_id: str  # sha256 of the tar
    size: int
    comment: str

    def descriptor(self) -> dict:
        return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": self.digest, "size": self.size}


def cached_layer(key: str) -> Layer | None:
    meta = IMAGES / "layers" / f"{key}.json"
    if meta.exists():
        layer = Layer(**json.loads(meta.read_text()))
        if (BLOBS / layer.digest.split(":")[1]).exists():
            return layer
    return None


def write_layer(key: str, comment: str, entries: Callable[[], Iterator[Entry]]) -> Layer:
    """The layer cached under `key`, or built from entries (in the order given, which callers sort)."""
    cached = cached_layer(key)
    if cached:
        return cached
    meta = IMAGES / "layers" / f"{key}.json"
    BLOBS.mkdir(parents=True, exist_ok=True)
    meta.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=BLOBS, prefix=".layer-")
    with os.fdopen(fd, "wb") as f:
        blob = _Sink(f)
        with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6) as gz:
            raw = _Sink(gz)
            with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for e in entries():
                    add_entry(tar, e)
    layer = Layer(f"sha256:{blob.hash.hexdigest()}", f"sha256:{raw.hash.hexdigest()}", blob.size, comment)
    os.chmod(tmp, 0o644)
    os.replace(tmp, BLOBS / blob.hash.hexdigest())
    meta.write_text(json.dumps(layer.__dict__, sort_keys=True))
    return layer


def add_entry(tar: tarfile.TarFile, e: Entry) -> None:
    if e.path is None:
        info = tarfile.TarInfo(e.name)
        if e.data is None:
            info.type, info.mode = tarfile.DIRTYPE, e.mode
        else:
            info.size, info.mode = len(e.data), e.mode
        info.uid = info.gid = 0
    else:
        # gettarinfo records a second name of an already added inode as a hard link.
        info = tar.gettarinfo(str(e.path), arcname=e.name)
        if e.uid is not None:
            info.uid, info.gid = e.uid, e.gid if e.gid is not None else e.uid
    info.uname = info.gname = ""
    info.mtime = int(info.mtime) if e.mtime is None else e.mtime
    if e.strip_write:
        info.mode &= ~0o022
    if info.isreg() and e.path is not None and e.data is None:
        with e.path.open("rb") as f:
            tar.addfile(info, f)
    elif info.isreg():
        tar.addfile(info, io.BytesIO(e.data or b""))
    else:
        tar.addfile(info)


def tree(src: Path, dest: str, keep: Callable[[str], bool] = lambda rel: True, **kw) -> Iterator[Entry]:
    """src's contents as entries under dest/ (dest's parents first), depth first, sorted by name."""
    prefix = dest.strip("/")
    parts = prefix.split("/") if prefix else []
    for i in range(len(parts)):
        yield Entry("/".join(parts[: i + 1]) + "/", mode=0o755)

    def walk(d: Path, rel: str) -> Iterator[Entry]:
        for name in sorted(os.listdir(d)):
            r = f"{rel}{name}"
            if not keep(r):
                continue
            p = d / name
            yield Entry(f"{prefix}/{r}" if prefix else r, path=p, **kw)
            if p.is_dir() and not p.is_symlink():
                yield from walk(p, r + "/")

    yield from walk(src, "")


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def put_blob(data: bytes) -> dict:
    BLOBS.mkdir(parents=True, exist_ok=True)
    digest = sha(data)
    if not (BLOBS / digest).exists():
        (BLOBS / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_archive(path: Path, ref: str, layers: list[Layer], config: dict, history: list[dict]) -> str:
    """An OCI layout in a tar; index.json names the image so `ctr images import` tags it `ref`."""
    image_config = {
        "architecture": GOARCH,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": history,
    }
    cfg = put_blob(canonical(image_config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [layer.descriptor() for layer in layers],
    }
    man = put_blob(canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **man,
                "platform": {"architecture": GOARCH, "os": "linux"},
                "annotations": {
                    # containerd's importer takes the full name from the first, the OCI tag from the second.
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                },
            }
        ],
    }
    blobs = sorted({cfg["digest"], man["digest"], *(layer.digest for layer in layers)})
    entries = [
        Entry("blobs/", mode=0o755),
        Entry("blobs/sha256/", mode=0o755),
        *(Entry(f"blobs/sha256/{d[7:]}", path=BLOBS / d[7:], uid=0, mode=0o644) for d in blobs),
        Entry("index.json", data=canonical(index), mode=0o644),
        Entry("oci-layout", data=canonical({"imageLayoutVersion": "1.0.0"}), mode=0o644),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            add_entry(tar, e)
    os.replace(tmp, path)
    return man["digest"]


# --- Dockerfile (final stage -> OCI config) -----------------------------------------------------


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """Dockerfile -> stages, each a list of (INSTRUCTION, arguments); continuations joined."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _pairs(args: str, env: dict[str, str]) -> dict[str, str]:
    """ENV/LABEL arguments: key=value pairs (shell quoting), or the old `KEY value` form."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: _expand(" ".join(words[1:]), env)}
    return {k: _expand(v, env) for k, _, v in (w.partition("=") for w in words)}


def dockerfile_config(path: Path) -> tuple[dict, list[tuple[str, str]]]:
    """The final stage's image configuration on top of python:3.11-slim's, and its COPY/RUN steps."""
    final = dockerfile_stages(path)[-1]
    env = dict(BASE_ENV)
    cfg: dict = {"Cmd": list(BASE_CMD)}
    labels: dict[str, str] = {}
    ports: dict[str, dict] = {}
    steps = []
    for keyword, args in final:
        if keyword == "ENV":
            env.update(_pairs(args, env))
        elif keyword == "LABEL":
            labels.update(_pairs(args, env))
        elif keyword == "USER":
            cfg["User"] = _expand(args, env)
        elif keyword == "WORKDIR":
            cfg["WorkingDir"] = _expand(args, env)
        elif keyword == "ENTRYPOINT":
            cfg["Entrypoint"] = json.loads(args)
            cfg.pop("Cmd", None)  # Docker: an ENTRYPOINT resets the CMD inherited from the base
        elif keyword == "CMD":
            cfg["Cmd"] = json.loads(args)
        elif keyword == "EXPOSE":
            for p in args.split():
                ports[p if "/" in p else f"{p}/tcp"] = {}
        elif keyword in ("COPY", "ADD", "RUN"):
            steps.append((keyword, args))
        elif keyword not in ("ARG",):
            raise Failed(f"{path.relative_to(ROOT)}: the local build does not know {keyword} {args}")
    cfg["Env"] = [f"{k}={v}" for k, v in env.items()]
    if labels:
        cfg["Labels"] = labels
    if ports:
        cfg["ExposedPorts"] = ports
    return cfg, steps


# --- the Debian root (debootstrap) --------------------------------------------------------------


def debian_mirrors() -> tuple[str, str | None]:
    """The Debian archive and security mirror this machine's apt uses (APWA_DEBIAN_MIRROR overrides)."""
    main, security = os.environ.get("APWA_DEBIAN_MIRROR"), None
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(p.read_text())
    for text in texts:
        for uri in re.findall(r"(?m)^\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", text):
            uri = uri.rstrip("/")
            if uri.endswith("/debian-security"):
                security = security or uri
            elif uri.endswith("/debian"):
                main = main or uri
    return main or "http://deb.debian.org/debian", security


def base_key() -> str:
    return sha(f"{SUITE} minbase {','.join(BASE_PACKAGES)} security-upgrade recipe{BASE_RECIPE} {GOARCH}")[:12]


def _unmount_under(d: Path) -> None:
    """Leftover mounts of an interrupted debootstrap (proc, sys) under d, deepest first."""
    prefix = str(d.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


def remove_tree(d: Path) -> None:
    if d.exists():
        _unmount_under(d)
        subprocess.run(["rm", "-rf", "--one-file-system", str(d)], check=True)


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Failed(f"{what} needs root (debootstrap and chroot); run as root (CI does)")


def ensure_tool(binary: str, package: str) -> None:
    if not shutil.which(binary):
        apt_install(package)


def apt_install(package: str) -> None:
    need_root(f"installing {package}")
    log(f"installing {package} with apt-get")
    run("apt-get", ["apt-get", "update", "-q"])
    run(
        "apt-get",
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def base_root() -> Path:
    """The Debian root (the Dockerfiles' build stage), made once by debootstrap and kept."""
    d = IMAGES / f"base-{SUITE}-{base_key()}"
    root = d / "rootfs"
    if (d / "done").exists():
        return root
    need_root("the Debian base root")
    ensure_tool("debootstrap", "debootstrap")
    main, security = debian_mirrors()
    remove_tree(d)
    d.mkdir(parents=True)
    try:
        _debootstrap(d, root, main, security)
    finally:
        _unmount_under(root)  # debootstrap mounts proc and sys in the root; an interrupted run leaves them
    return root


def _debootstrap(d: Path, root: Path, main: str, security: str | None) -> None:
    t0 = time.monotonic()
    log(f"debootstrap {SUITE} from {main} into {root} (about a minute; log: {LOGS / 'debootstrap.log'})")
    run(
        "debootstrap",
        ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), main],
    )
    # Security and point-release fixes, as the python:3.11-slim base has them.
    sources = [f"deb {main} {SUITE} main", f"deb {main} {SUITE}-updates main"]
    if security:
        sources.append(f"deb {security} {SUITE}-security main")
    (root / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    chroot_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    run("debootstrap", ["chroot", str(root), "apt-get", "update", "-q"], env=chroot_env)
    run("debootstrap", ["chroot", str(root), "apt-get", "-y", "-q", "upgrade"], env=chroot_env)
    run("debootstrap", ["chroot", str(root), "apt-get", "clean"], env=chroot_env)
    pkgs = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W"], capture_output=True, text=True, check=True, env=chroot_env
    )
    (d / "packages.txt").write_text(pkgs.stdout)
    _unmount_under(root)
    (d / "done").write_text(f"{time.time():.0f}\n")
    log(f"debian root ready in {time.monotonic() - t0:.0f}s")


# What the final images leave out of the Debian root (paths relative to /, fnmatch-like regexes).
TRIM = re.compile(
    r"^(?:"
    r"(?:dev|proc|sys|tmp|run|mnt|media)/.+"  # runtime mounts and scratch: empty dirs only
    r"|usr/share/doc/[^/]+/(?!copyright$).+"  # docs, but keep the licenses
    r"|usr/share/(?:man|info|lintian|linda|bug|locale)/.+"
    r"|usr/share/python-wheels(?:/.*)?"  # pip and setuptools wheels: no installer in the images
    r"|var/lib/apt/lists/.+|var/cache/apt/.+|var/cache/debconf/.+-old|var/lib/dpkg/.+-old"
    r"|var/cache/ldconfig/aux-cache|var/log/.+|root/.+|etc/machine-id"
    r")$"
)
EMPTIED = {"etc/hostname", "etc/resolv.conf"}  # the host's, copied by debootstrap; the runtime mounts its own


# Where the images carry the Debian package versions of their root (dpkg-query -W at build time).
PACKAGES_IN_IMAGE = "usr/share/apwa/debian-packages.txt"


def debian_packages() -> bytes:
    """`dpkg-query -W` of the Debian root, recorded when debootstrap made it: package<TAB>version lines."""
    base_root()
    return (IMAGES / f"base-{SUITE}-{base_key()}" / "packages.txt").read_bytes()


def base_layer() -> Layer:
    root = base_root()
    packages = debian_packages()

    def entries() -> Iterator[Entry]:
        for e in tree(root, "", keep=lambda rel: not TRIM.match(rel), mtime=None):
            if e.name in EMPTIED:
                yield Entry(e.name, data=b"", mode=0o644)
            else:
                yield e
        yield Entry(str(Path(PACKAGES_IN_IMAGE).parent) + "/", mode=0o755)
        yield Entry(PACKAGES_IN_IMAGE, data=packages, mode=0o644)

    # Owners stay as Debian set them (root, and e.g. group shadow); mtimes stay as dpkg left them,
    # because the stdlib's .pyc files are checked against their .py's mtime: a fixed mtime would make
    # every start recompile the stdlib. The layer is still a pure function of the cached root.
    return write_layer(
        f"base-{base_key()}-{SCRIPT_HASH[:12]}",
        f"debootstrap {SUITE} minbase {' '.join(BASE_PACKAGES)}, upgraded, trimmed",
        entries,
    )


# --- the venv (the Dockerfiles' build stage) ----------------------------------------------------

LOCK = ROOT / "images" / "requirements.lock"


def project_inputs() -> list[tuple[str, Path]]:
    """What the build stage COPYs: pyproject.toml, README.md, the lock and operator/ (as in the context)."""
    keep = ("pyproject.toml", "README.md", "images/requirements.lock", "operator")
    return [(r, p) for r, p in context_files() if r in keep or r.startswith("operator/")]


def venv_key() -> str:
    return sha(f"{base_key()} {files_digest(project_inputs())} {SCRIPT_HASH}")[:16]


def locked() -> list[str]:
    """The lock's requirements (name==version), without hashes and comments."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    return [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def wheel_platforms() -> list[str]:
    arch = platform.machine()
    tags = [f"manylinux_2_{v}_{arch}" for v in range(36, 4, -1)]  # bookworm has glibc 2.36
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def venv_layer() -> Layer:
    key = venv_key()
    cached = cached_layer(f"venv-{key}")
    if cached:
        return cached
    root = base_root()
    work = IMAGES / "work" / f"venv-{key}"
    remove_tree(work)
    work.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        wheels = work / "wheels"
        ctx = work / "ctx"
        for rel, p in project_inputs():
            dest = ctx / (Path(rel).name if rel == "images/requirements.lock" else rel)
            if p.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dest)
        log(f"building the apwa wheel and fetching the locked wheels (log: {LOGS / 'wheels.log'})")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
            apt_install("python3-pip")  # Debian's python3 comes without pip
        run("wheels", [*pip, "wheel", "--no-deps", "-w", str(wheels), str(ctx)])
        plat = [f"--platform={t}" for t in wheel_platforms()]
        run(
            "wheels",
            [
                *pip,
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--implementation=cp",
                "--python-version=3.11",
                "--abi=cp311",
                *plat,
                "-d",
                str(wheels),
                "-r",
                str(LOCK),
            ],
        )
        log(f"installing /opt/apwa in a copy of the Debian root (log: {LOGS / 'venv.log'})")
        chroot = work / "root"
        run("venv", ["cp", "-a", str(root), str(chroot)])
        shutil.copytree(wheels, chroot / "tmp/wheels")
        shutil.copy2(LOCK, chroot / "tmp/requirements.lock")
        (pip_whl,) = (chroot / "usr/share/python-wheels").glob("pip-*.whl")
        # SOURCE_DATE_EPOCH: pip compiles hash-checked .pyc files, so they do not depend on mtimes.
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LC_ALL": "C.UTF-8",
            "SOURCE_DATE_EPOCH": str(EPOCH),
            "PIP_NO_CACHE_DIR": "1",
        }
        run("venv", ["chroot", str(chroot), "/usr/bin/python3", "-m", "venv", "--without-pip", "/opt/apwa"], env=env)
        (apwa_whl,) = wheels.glob("apwa-*.whl")
        version = apwa_whl.name.split("-")[1]
        run(
            "venv",
            [
                "chroot",
                str(chroot),
                "/opt/apwa/bin/python",
                f"/usr/share/python-wheels/{pip_whl.name}/pip",
                "install",
                "--no-index",
                "--find-links=/tmp/wheels",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--require-hashes",
                "--no-deps",
                "-r",
                "/tmp/requirements.lock",
            ],
            env=env,
        )
        # Then the package itself (built here, not in the lock): its dependencies are all there.
        run(
            "venv",
            [
                "chroot",
                str(chroot),
                "/opt/apwa/bin/python",
                f"/usr/share/python-wheels/{pip_whl.name}/pip",
                "install",
                "--no-index",
                "--find-links=/tmp/wheels",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--no-deps",
                f"apwa=={version}",
            ],
            env=env,
        )
        layer = write_layer(
            f"venv-{key}",
            "the /opt/apwa venv: apwa + images/requirements.lock",
            lambda: tree(chroot / "opt/apwa", "opt/apwa", uid=0, gid=0),
        )
        log(f"venv layer ready in {time.monotonic() - t0:.0f}s")
        return layer
    finally:
        remove_tree(work)


def src_layer(files: list[tuple[str, Path]]) -> Layer:
    key = f"src-{files_digest(files)[:16]}-{SCRIPT_HASH[:12]}"

    def entries() -> Iterator[Entry]:
        yield Entry("src/", mode=0o755)
        for rel, p in files:
            yield Entry(f"src/{rel}", path=p, uid=0, gid=0, strip_write=True)

    return write_layer(key, "COPY . /src (the repository minus .dockerignore)", entries)


# --- Go programs ----------------------------------------------------------------------------------


def go_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}


def go_version() -> str:
    out = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, env=go_env())
    if out.returncode != 0:
        raise Failed("`go env GOVERSION` failed: is Go installed and on PATH?")
    return out.stdout.strip()


PAUSE = ROOT / "images" / "pause"
COREDNS_MOD = ROOT / "testenv" / "go" / "coredns"


def pause_inputs() -> list[tuple[str, Path]]:
    return [(p.name, p) for p in sorted(PAUSE.iterdir()) if p.is_file()]


def coredns_version() -> str:
    m = re.search(r"(?m)^\s*(?:require\s+)?github\.com/coredns/coredns\s+(v\S+)", (COREDNS_MOD / "go.mod").read_text())
    if not m:
        raise Failed(f"{COREDNS_MOD / 'go.mod'}: no github.com/coredns/coredns requirement")
    return m.group(1)


def coredns_inputs() -> list[tuple[str, Path]]:
    return [(n, COREDNS_MOD / n) for n in ("go.mod", "go.sum", "Corefile")]


def coredns_binary() -> Path:
    """CoreDNS from the committed wrapper module into $cache/coredns-<version>/ (kept, like testenv)."""
    out = CACHE / f"coredns-{coredns_version()}" / "coredns"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"building CoreDNS {coredns_version()} (minutes on 2 cores the first time; log: {LOGS / 'coredns.log'})")
    tmp = out.with_name("coredns.tmp")
    run(
        "coredns",
        ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), "github.com/coredns/coredns"],
        cwd=COREDNS_MOD,
        env=go_env(),
    )
    os.replace(tmp, out)
    return out


# --- images ---------------------------------------------------------------------------------------


@dataclass
class Image:
    name: str
    repo: str
    inputs: list[str] = field(default_factory=list)  # what the tag hashes
    version: str = ""

    @property
    def tag(self) -> str:
        h = sha("\n".join([self.name, SCRIPT_HASH, *self.inputs]))[:12]
        return f"{self.version}-{h}" if self.version else h

    @property
    def ref(self) -> str:
        return f"{REGISTRY}/{self.repo}:{self.tag}"

    @property
    def archive(self) -> Path:
        return IMAGES / f"{self.repo}-{self.tag}.oci.tar"


def packages_file(img: Image) -> Path:
    """The record of the Debian package versions in a worker or operator image, next to its archive."""
    return img.archive.with_name(img.archive.name.removesuffix(".oci.tar") + ".debian-packages.txt")


def image(name: str) -> Image:
    if name == "pause":
        return Image(name, "pause", [files_digest(pause_inputs()), go_version()])
    if name == "coredns":
        return Image(name, "coredns", [files_digest(coredns_inputs()), go_version()], version=coredns_version())
    dockerfile = ROOT / "images" / name / "Dockerfile"
    inputs = [sha(dockerfile.read_bytes()), base_key(), venv_key()]
    if name == "worker":
        inputs.append(files_digest(context_files()))
    return Image(name, f"apwa-{name}", inputs)


def build_image(img: Image) -> None:
    t0 = time.monotonic()
    if img.name == "pause":
        layers, cfg, history = build_pause()
    elif img.name == "coredns":
        layers, cfg, history = build_coredns()
    else:
        layers, cfg, history = build_python(img.name)
    digest = write_archive(img.archive, img.ref, layers, cfg, history)
    if img.name in ("worker", "operator"):
        packages_file(img).write_bytes(debian_packages())
    size = img.archive.stat().st_size
    log(f"built {img.ref} ({size / 1e6:.1f} MB, manifest {digest[:19]}) in {time.monotonic() - t0:.0f}s")


def _history(layers: list[Layer]) -> list[dict]:
    return [{"created_by": layer.comment or "apwa hack/images.sh"} for layer in layers]


def build_pause() -> tuple[list[Layer], dict, list[dict]]:
    key = f"pause-{sha(files_digest(pause_inputs()) + go_version() + SCRIPT_HASH)[:16]}"
    work = IMAGES / "work" / key
    remove_tree(work)
    work.mkdir(parents=True)
    try:
        log(f"building pause (log: {LOGS / 'pause.log'})")
        run(
            "pause",
            ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(work / "pause"), "."],
            cwd=PAUSE,
            env=go_env(),
        )
        layer = write_layer(
            key,
            "images/pause: a static Go binary",
            lambda: iter([Entry("pause", path=work / "pause", uid=0, gid=0, mode=0o755)]),
        )
    finally:
        remove_tree(work)
    # The user of registry.k8s.io/pause.
    return [layer], {"Entrypoint": ["/pause"], "User": "65535:65535"}, _history([layer])


def build_coredns() -> tuple[list[Layer], dict, list[dict]]:
    binary = coredns_binary()
    key = f"coredns-{sha(files_digest(coredns_inputs()) + go_version() + SCRIPT_HASH)[:16]}"
    corefile = (COREDNS_MOD / "Corefile").read_bytes()

    def entries() -> Iterator[Entry]:
        yield Entry("coredns", path=binary, uid=0, gid=0)
        yield Entry("etc/", mode=0o755)
        yield Entry("etc/coredns/", mode=0o755)
        yield Entry("etc/coredns/Corefile", data=corefile, mode=0o644)

    layer = write_layer(key, f"CoreDNS {coredns_version()} (testenv/go/coredns) and a default Corefile", entries)
    cfg = {
        "Entrypoint": ["/coredns"],
        "Cmd": ["-conf", "/etc/coredns/Corefile"],
        "User": "65532:65532",  # not root: it listens on 1053, not 53 (the Service maps 53 -> 1053)
        "ExposedPorts": {"1053/tcp": {}, "1053/udp": {}},
    }
    return [layer], cfg, _history([layer])


def build_python(name: str) -> tuple[list[Layer], dict, list[dict]]:
    dockerfile = ROOT / "images" / name / "Dockerfile"
    cfg, steps = dockerfile_config(dockerfile)
    layers = [base_layer(), venv_layer()]
    context = None
    for keyword, args in steps:
        words = shlex.split(args)
        if keyword == "COPY" and words == ["--from=build", "/opt/apwa", "/opt/apwa"]:
            continue  # layer 2
        if keyword == "COPY" and words == [".", "/src"]:
            context = context_files()
            layers.append(src_layer(context))
        elif keyword == "RUN" and re.fullmatch(r"python -m pip uninstall -y( -q)? pip setuptools wheel", args):
            continue  # the Debian root has no pip, setuptools or wheel installed (checked by the tests)
        else:
            raise Failed(
                f"{dockerfile.relative_to(ROOT)}: the local build cannot reproduce `{keyword} {args}`; "
                "teach hack/images.py"
            )
    return layers, cfg, _history(layers)


# --- commands ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with (IMAGES / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another hack/images.sh run to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def print_line(img: Image) -> None:
    print(f"{img.name} {img.ref} {img.archive}", flush=True)


def cmd_build(names: list[str]) -> list[Image]:
    imgs = [image(n) for n in names]
    with build_lock():
        for img in imgs:
            if img.archive.exists():
                log(f"{img.name}: {img.ref} is built")
            else:
                log(f"{img.name}: building {img.ref}")
                build_image(img)
            print_line(img)
        # What this call built stays, even when the tree changed meanwhile (an edit during the build).
        collect_garbage({img.archive for img in imgs})
    return imgs


def archive_digests(archive: Path) -> set[str]:
    """The blobs an archive holds (index -> manifest -> config and layers)."""
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        out = set()
        for desc in index["manifests"]:
            manifest = json.load(tar.extractfile(f"blobs/sha256/{desc['digest'][7:]}"))
            out |= {desc["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    return out


def collect_garbage(protect: set[Path]) -> None:
    """Drops what no current image uses: older archives, their blobs and layers, other Debian roots.

    "Current" is the tag each of the four images has now, built or not, so building one image
    never removes another's archive; an older archive is rebuilt from the cache if its inputs return.
    """
    try:
        current = {image(n).archive for n in NAMES} | protect
    except Failed:
        return  # e.g. no Go here: then nothing can tell what is current, so keep everything
    keep: set[str] = set()
    for archive in IMAGES.glob("*.oci.tar"):
        if archive in current:
            keep |= archive_digests(archive)
        else:
            log(f"removing the outdated {archive.name}")
            archive.unlink()
    for record in IMAGES.glob("*.debian-packages.txt"):
        if not record.with_name(record.name.removesuffix(".debian-packages.txt") + ".oci.tar").exists():
            record.unlink()
    for meta in (IMAGES / "layers").glob("*.json"):
        digest = json.loads(meta.read_text())["digest"]
        if digest not in keep and not meta.name.startswith(f"venv-{venv_key()}"):
            meta.unlink()
        else:
            keep.add(digest)
    for blob in BLOBS.glob("*"):
        if f"sha256:{blob.name}" not in keep:
            blob.unlink()
    for old in IMAGES.glob(f"base-{SUITE}-*"):
        if old.name != f"base-{SUITE}-{base_key()}":
            log(f"removing the outdated Debian root {old.name}")
            remove_tree(old)


def cmd_import(sock: str, names: list[str]) -> None:
    if not shutil.which("ctr"):
        raise Failed("ctr not found: install containerd (apt-get install containerd) first")
    with contextlib.redirect_stdout(sys.stderr):
        imgs = cmd_build(names)
    ctr = ["ctr", "-a", sock, "-n", "k8s.io"]
    listing = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True)
    if listing.returncode != 0:
        raise Failed(f"`{shlex.join([*ctr, 'images', 'ls'])}` failed: {listing.stderr.strip()}")
    present = {}
    for line in listing.stdout.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3:
            present[words[0]] = words[2]
    for img in imgs:
        with tarfile.open(img.archive) as tar:
            index = json.load(tar.extractfile("index.json"))
        digest = index["manifests"][0]["digest"]
        if present.get(img.ref) == digest:
            log(f"{img.name}: {img.ref} is in containerd already")
        else:
            log(f"{img.name}: importing {img.ref} (log: {LOGS / 'import.log'})")
            run("import", [*ctr, "images", "import", str(img.archive)])
            check = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True)
            if img.ref not in check.stdout.split():
                raise Failed(f"import of {img.archive}: {img.ref} is not listed afterwards", LOGS / "import.log")
        print_line(img)


LOCK_HEADER = """\
# The exact runtime dependencies of the `apwa` package in the worker and operator images, with the
# sha256 of every wheel of each pinned version (pip installs them in hash-checking mode), used by
# BOTH builds: images/*/Dockerfile (pip install --require-hashes -r) and hack/images.sh (wheels
# downloaded on the host, installed with --no-index). Refresh after changing [project].dependencies
# in pyproject.toml: `make lock` (uv pip compile for Python 3.11 on Linux; LOCK_UPGRADE=1 moves
# every pin to its newest version, otherwise the pins here are kept where they still fit).
"""


def cmd_lock() -> None:
    """images/requirements.lock from pyproject.toml with uv (`make lock` installs the pinned uv)."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        raise Failed("uv not found: run `make lock`, which installs the version the Makefile pins into .venv")
    upgrade = ["--upgrade"] if os.environ.get("LOCK_UPGRADE") == "1" else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "requirements.lock"
        shutil.copy2(LOCK, out)  # uv keeps the pins of an existing output file where they still fit
        run(
            "lock",
            [
                uv,
                "pip",
                "compile",
                "pyproject.toml",
                "--python-version=3.11",
                "--python-platform=linux",
                "--generate-hashes",
                "--custom-compile-command=make lock",
                *upgrade,
                "-o",
                str(out),
            ],
            cwd=ROOT,
        )
        LOCK.write_text(LOCK_HEADER + out.read_text())
    log(f"wrote {LOCK.relative_to(ROOT)} ({len(locked())} packages)")


def main(argv: list[str]) -> int:
    usage = (
        "usage: hack/images.sh build [NAME...] | refs [NAME...] | import SOCKET [NAME...] | lock  (NAME: "
        + "|".join(NAMES)
        + ")"
    )
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "import":
        if not rest:
            print(usage, file=sys.stderr)
            return 2
        sock, rest = rest[0], rest[1:]
    names = rest or list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown or command not in ("build", "refs", "import", "lock"):
        print(usage, file=sys.stderr)
        return 2
    try:
        if command == "build":
            cmd_build(names)
        elif command == "refs":
            for n in names:
                print_line(image(n))
        elif command == "import":
            cmd_import(sock, names)
        else:
            cmd_lock()
    except Failed as e:
        log(f"FAILED: {e.what}")
        if e.logfile:
            log(f"log: {e.logfile} (last lines below)")
            with contextlib.suppress(OSError):
                for line in e.logfile.read_text(errors="replace").splitlines()[-15:]:
                    print(f"    {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
