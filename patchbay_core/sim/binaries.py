"""`[[binary]]` and `[[prepare]]`: the programs steps run, found, fetched or built once per run.

Modes (the book's): `path` (a file: next to the sim file, else the working directory; a
`target:` prefix means the project's cargo target directory), `fetch` (a URL; `.tar.gz`
archives are unpacked and the file named like the binary, or the only executable, is taken),
`build` (`cargo build --release` of a git `repo` at `commit`, of a source directory `path`, or
of the project workspace, with `--example`/`--bin`, features), `target` (an artifact already in
the project's target directory). Everything lands under the run's `.binaries/`; cargo builds
share `<work dir>/.cargo-target` so a second run does not rebuild. Only binaries some step
references are resolved.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import anyio

from .model import BinarySpec, PrepareSpec, Where

BUILD_TIMEOUT = 1800.0  # seconds: a cold cargo build of a real project
FETCH_TIMEOUT = 300.0


def cargo_program() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home = Path.home() / ".cargo" / "bin" / "cargo"
    return str(home) if home.is_file() else None


class Binaries:
    """Resolves binaries and runs prepare builds; each distinct one only once per run."""

    def __init__(self, run_root: Path, work_root: Path, project_root: Path) -> None:
        self.dir = run_root / ".binaries"
        self.cargo_target = work_root / ".cargo-target"
        self.project_root = project_root
        self._done: dict[tuple[object, ...], Path | BaseException] = {}
        self._locks: dict[tuple[object, ...], anyio.Lock] = {}

    async def _once(self, key: tuple[object, ...], make: object) -> Path:
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            if key not in self._done:
                try:
                    self._done[key] = await make()  # type: ignore[operator]
                except Exception as exc:
                    self._done[key] = exc
            result = self._done[key]
        if isinstance(result, BaseException):
            raise result
        return result

    async def resolve(self, spec: BinarySpec) -> Path:
        return await self._once(spec.fingerprint(), lambda: self._resolve(spec))

    async def prepare(self, spec: PrepareSpec) -> None:
        key = ("prepare", spec.examples, spec.bins, spec.features, spec.all_features)
        await self._once(key, lambda: self._prepare(spec))

    # ---- modes ------------------------------------------------------------------------------

    async def _resolve(self, spec: BinarySpec) -> Path:
        if spec.mode == "path":
            return await self._path(spec)
        if spec.mode == "fetch":
            return await self._fetch(spec)
        if spec.mode == "target":
            return await self._target(spec)
        return await self._build(spec)

    async def _path(self, spec: BinarySpec) -> Path:
        assert spec.path is not None
        where = spec.where
        if spec.path.startswith("target:"):
            target = await self._project_target_dir(where)
            candidates = [target / spec.path[len("target:"):]]
        else:
            raw = Path(spec.path).expanduser()
            candidates = [raw] if raw.is_absolute() else [spec.base_dir / raw, Path.cwd() / raw]
        for candidate in candidates:
            if candidate.is_dir():
                raise where.error(f"binary {spec.name!r}: {candidate} is a directory; to build it with cargo set "
                                  "mode = \"build\"")
            if candidate.is_file():
                return candidate.resolve()
        looked = ", ".join(str(c) for c in candidates)
        raise where.error(f"binary {spec.name!r}: no file at {spec.path!r} (looked for {looked})")

    async def _fetch(self, spec: BinarySpec) -> Path:
        assert spec.url is not None
        out = self.dir / spec.name
        out.mkdir(parents=True, exist_ok=True)
        download = out / "download"
        try:
            with anyio.fail_after(FETCH_TIMEOUT):
                await anyio.to_thread.run_sync(_download, spec.url, download, abandon_on_cancel=True)
        except TimeoutError:
            raise spec.where.error(f"binary {spec.name!r}: fetching {spec.url} took over "
                                   f"{FETCH_TIMEOUT:.0f}s") from None
        except (OSError, ValueError) as exc:
            raise spec.where.error(f"binary {spec.name!r}: cannot fetch {spec.url}: {exc}") from None
        if tarfile.is_tarfile(download):
            return _unpack(download, out / "unpacked", spec)
        name = Path(spec.url.split("?")[0].rstrip("/")).name or spec.name
        target = out / (name if not name.endswith((".tar.gz", ".tgz")) else spec.name)
        download.replace(target)
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return target

    async def _target(self, spec: BinarySpec) -> Path:
        target = await self._project_target_dir(spec.where)
        artifact = _artifact(target, spec.example, spec.bin, spec.name)
        if not artifact.is_file():
            what = f"--example {spec.example}" if spec.example else f"--bin {spec.bin}"
            raise spec.where.error(f"binary {spec.name!r}: {artifact} does not exist; build it first (cargo build "
                                   f"--release {what}, or a [[prepare]] entry)")
        return artifact

    async def _build(self, spec: BinarySpec) -> Path:
        where = spec.where
        if spec.repo is not None:
            src = self.dir / spec.name / "src"
            if src.exists():
                shutil.rmtree(src)
            src.parent.mkdir(parents=True, exist_ok=True)
            repo = spec.repo
            local = spec.base_dir / repo
            if "://" not in repo and ":" not in repo.split("/")[0] and local.is_dir():
                repo = str(local)  # a repository next to the sim file
            await _run(["git", "clone", "--quiet", repo, str(src)], Path.cwd(), where, f"binary {spec.name!r}: "
                       f"git clone {spec.repo}", 600)
            await _run(["git", "-C", str(src), "checkout", "--quiet", spec.commit], Path.cwd(), where,
                       f"binary {spec.name!r}: git checkout {spec.commit}", 120)
        elif spec.path is not None:
            raw = Path(spec.path).expanduser()
            src = next((c for c in ([raw] if raw.is_absolute() else [spec.base_dir / raw, Path.cwd() / raw])
                        if (c / "Cargo.toml").is_file()), raw)
            if not (src / "Cargo.toml").is_file():
                raise where.error(f"binary {spec.name!r}: {spec.path!r} is not a cargo package (no Cargo.toml)")
        else:
            src = self.project_root
            if not (src / "Cargo.toml").is_file():
                raise where.error(f"binary {spec.name!r}: builds from the project workspace, but {src} has no "
                                  "Cargo.toml (run patchbay from the project root, or give repo or path)")
        target = self.cargo_target
        argv = _cargo_argv(where, spec.example, spec.bin, spec.features, spec.all_features)
        await _run([*argv, "--target-dir", str(target)], src, where, f"binary {spec.name!r}: cargo build",
                   BUILD_TIMEOUT)
        artifact = _artifact(target, spec.example, spec.bin, spec.name)
        if not artifact.is_file():
            raise where.error(f"binary {spec.name!r}: cargo built, but {artifact} is not there (name the binary "
                              "with bin = \"...\" or example = \"...\")")
        return artifact

    async def _prepare(self, spec: PrepareSpec) -> Path:
        root = self.project_root
        if not (root / "Cargo.toml").is_file():
            raise spec.where.error(f"[[prepare]] builds in the project workspace, but {root} has no Cargo.toml "
                                   "(run patchbay from the project root)")
        argv = _cargo_argv(spec.where, None, None, spec.features, spec.all_features)
        argv += [a for ex in spec.examples for a in ("--example", ex)]
        argv += [a for b in spec.bins for a in ("--bin", b)]
        await _run(argv, root, spec.where, "[[prepare]]: cargo build", BUILD_TIMEOUT)
        return root

    async def _project_target_dir(self, where: Where) -> Path:
        env = os.environ.get("CARGO_TARGET_DIR")
        if env:
            return Path(env) / "release"
        cargo = cargo_program()
        if cargo and (self.project_root / "Cargo.toml").is_file():
            result = await anyio.run_process([cargo, "metadata", "--no-deps", "--format-version", "1"],
                                             cwd=self.project_root, check=False)
            if result.returncode == 0:
                try:
                    return Path(json.loads(result.stdout)["target_directory"]) / "release"
                except (ValueError, KeyError, TypeError):
                    pass
        return self.project_root / "target" / "release"


def _cargo_argv(where: Where, example: str | None, bin_name: str | None, features: Sequence[str],
                all_features: bool) -> list[str]:
    cargo = cargo_program()
    if cargo is None:
        raise where.error("cargo is not installed (needed to build this binary); install Rust (rustup) or use "
                          "mode = \"path\" / \"fetch\"")
    argv = [cargo, "build", "--release", "--quiet"]
    if example:
        argv += ["--example", example]
    if bin_name:
        argv += ["--bin", bin_name]
    if all_features:
        argv.append("--all-features")
    elif features:
        argv += ["--features", ",".join(features)]
    return argv


def _artifact(release: Path, example: str | None, bin_name: str | None, name: str) -> Path:
    if release.name != "release":
        release = release / "release"
    if example:
        return release / "examples" / example
    return release / (bin_name or name)


async def _run(argv: list[str], cwd: Path, where: Where, what: str, timeout: float) -> None:
    try:
        with anyio.fail_after(timeout):
            result = await anyio.run_process(argv, cwd=cwd, check=False, stdin=subprocess.DEVNULL)
    except TimeoutError:
        raise where.error(f"{what}: took over {timeout:.0f}s") from None
    except OSError as exc:
        raise where.error(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    if result.returncode != 0:
        tail = "\n".join(result.stderr.decode(errors="replace").strip().splitlines()[-15:])
        raise where.error(f"{what} failed (exit status {result.returncode}):\n{tail}")


def _download(url: str, dest: Path) -> None:
    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        shutil.copyfileobj(response, out)
    tmp.replace(dest)


def _safe_members(tar: tarfile.TarFile, spec: BinarySpec) -> list[tarfile.TarInfo]:
    """Regular files and directories that stay inside the destination; links and devices are skipped."""
    out = []
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts:
            raise spec.where.error(f"binary {spec.name!r}: the archive from {spec.url} has an unsafe path "
                                   f"{member.name!r}")
        if member.isfile() or member.isdir():
            out.append(member)
    return out


def _unpack(archive: Path, dest: Path, spec: BinarySpec) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            members = _safe_members(tar, spec)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python before 3.11.4: the members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError) as exc:
        raise spec.where.error(f"binary {spec.name!r}: cannot unpack {spec.url}: {exc}") from None
    files = [p for p in sorted(dest.rglob("*")) if p.is_file() and not p.is_symlink()]
    named = [p for p in files if p.name == spec.name]
    if len(named) == 1:
        return named[0]
    executables = [p for p in files if os.access(p, os.X_OK)]
    if len(executables) == 1:
        return executables[0]
    listing = ", ".join(str(p.relative_to(dest)) for p in files[:10]) or "nothing"
    raise spec.where.error(f"binary {spec.name!r}: the archive from {spec.url} has no file named {spec.name!r} and "
                           f"not exactly one executable (it has: {listing})")
