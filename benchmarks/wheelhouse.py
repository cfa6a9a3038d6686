"""Wheels for an offline GPU machine: download them here, install them there without an index.

The GPU image we borrow has Python 3.12, a CUDA build of PyTorch and most of our dependencies,
but no package index. What it lacks travels with the checkout as a folder of wheels (.whl in the
repository root, kept out of git by `echo /.whl/ >> .git/info/exclude`) and is installed into a
folder of its own that goes first on PYTHONPATH, never into the image's site-packages: the
image's CUDA torch must never be replaced, so every install is --no-deps.

    python benchmarks/wheelhouse.py build                   # here, with an index: fills .whl
    python benchmarks/wheelhouse.py install --target .site  # there, offline: .whl -> .site
    TRITON_INTERPRET=0 PYTHONPATH=$PWD/.site:$PWD python -m pytest -m gpu tests/gpu

Stdlib only: benchmarks/gpu_check.py imports it on a machine where nothing else may be there yet.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WHEELHOUSE = ROOT / ".whl"
DEFAULT_TARGET = ROOT / ".site"
DEFAULT_PYTHON_VERSION = "3.12"
# The image's torch wheel is manylinux_2_28, so its glibc is at least 2.28 and runs any wheel
# built for 2.28 or older. pip does not widen a given manylinux_2_X platform to older ones, so each
# is named; manylinux2014 also stands for the legacy manylinux2010 and manylinux1 aliases.
NEWEST_GLIBC_MINOR = 28
OLDEST_GLIBC_MINOR = 5
DEFAULT_PLATFORMS = tuple(
    f"manylinux_2_{minor}_x86_64" for minor in range(NEWEST_GLIBC_MINOR, OLDEST_GLIBC_MINOR - 1, -1)
) + ("manylinux2014_x86_64",)

# What the GPU image lacks of our dependencies (pyproject.toml, minimum versions as it asks) and of
# theirs: each wheel's Requires-Dist checked with `pip check` against a venv of the image's packages.
# What the image has (torch, numpy, scipy, huggingface_hub, safetensors, Pillow, filelock, regex,
# typing-extensions, idna, certifi) is left out, so nothing of the image is shadowed.
MISSING_ON_GPU_IMAGE = (
    "soundfile>=0.12",
    "cffi",  # soundfile's
    "pycparser",  # cffi's
    "soxr>=0.3",
    "torchsde>=0.2.6",
    "trampoline",  # torchsde's
    "diffusers>=0.30",  # the tests' reference models and sa-bench's peer
    "importlib_metadata",  # diffusers'
    "zipp",  # importlib_metadata's
    "lazy-importer",  # importlib_metadata's (on Python < 3.15)
    "requests",  # diffusers'
    "charset_normalizer",  # requests'
    "urllib3",  # requests'
)
# The modules our code and tests import from the list above; gpu_check records which are absent.
NEEDED_MODULES = ("soundfile", "soxr", "torchsde", "diffusers")
# A budget, not a limit of pip's: the wheels travel with the checkout to a machine lent for minutes.
SIZE_BUDGET_BYTES = 16 * 2**20
INSTALL_TIMEOUT_S = 600
TAIL_CHARS = 2000
IGNORE_HINT = "echo /{path}/ >> {exclude}"


class WheelhouseError(RuntimeError):
    """A wheel could not be had; the message names the package and the fix."""


def _project(requirement: str) -> str:
    """The normalized name of a requirement (PEP 503, '_' for '-'): for every package we carry it is
    also the name of the module it installs."""
    name = re.split(r"[<>=!~;\[ (]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "_", name).lower()


def _wheel_project(wheel: Path) -> str:
    """The normalized project name of a wheel file: what comes before its first '-'."""
    return _project(wheel.name.split("-")[0])


def _unfindable(modules: tuple[str, ...], first: Path) -> list[str]:
    """The modules that neither `first` nor sys.path provides; none is imported."""
    importlib.invalidate_caches()  # a folder just filled may be cached as it was
    path = [str(first), *sys.path]
    return [m for m in modules if importlib.machinery.PathFinder.find_spec(m, path) is None]


def missing_modules() -> list[str]:
    """Which of NEEDED_MODULES this interpreter cannot import (found by spec, none imported)."""
    return [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]


def _pip_download(requirement: str, dest: Path, python_version: str, platforms: tuple[str, ...]) -> Path:
    """One wheel, no dependencies, for the target interpreter; a fresh folder says which file it is."""
    with tempfile.TemporaryDirectory(dir=dest) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps"]
        command += ["--python-version", python_version, "--implementation", "cp"]
        for platform in platforms:
            command += ["--platform", platform]
        done = subprocess.run(command + ["-d", scratch, requirement], capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no output)"]
            older = f" (or {len(platforms) - 1} other tags)" if len(platforms) > 1 else ""
            raise WheelhouseError(
                f"no wheel of {requirement} for CPython {python_version} on {platforms[0]}{older}: "
                f"pip said: {last[0]}\n"
                f"  fix: pin a version of {_project(requirement)} that ships such a wheel (see its files "
                f"on PyPI), add the platform tag its wheels carry with --platform, or check that an "
                f"index is reachable (`pip download {_project(requirement)}`)"
            )
        return wheels[0].replace(dest / wheels[0].name)


def _print_ignore_hint(dest: Path) -> None:
    """Wheels inside the checkout belong in .git/info/exclude, not in commits."""
    try:
        relative = dest.resolve().relative_to(ROOT)
        ignored = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "-q", str(relative)], stderr=subprocess.DEVNULL
        )
        if ignored.returncode != 1:  # 0: ignored; 128: not a git checkout
            return
        exclude = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--git-path", "info/exclude"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (ValueError, OSError):  # outside the checkout, or no git
        return
    print(f"{relative} is not ignored by git; keep it out of commits with:")
    print("  " + IGNORE_HINT.format(path=relative.as_posix(), exclude=exclude or ".git/info/exclude"))


def build(
    dest: Path,
    python_version: str = DEFAULT_PYTHON_VERSION,
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    packages: tuple[str, ...] = MISSING_ON_GPU_IMAGE,
) -> list[Path]:
    """Download one wheel per package (no dependencies: the list is the closure) into dest.

    Other versions of the same projects already in dest are removed, since install() takes every
    wheel there. Raises WheelhouseError naming each package that has no wheel for the target.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    saved, failures = [], []
    for requirement in packages:
        try:
            saved.append(_pip_download(requirement, dest, python_version, platforms))
        except WheelhouseError as e:
            failures.append(str(e))
    if failures:
        raise WheelhouseError("\n".join(failures))
    built = {_wheel_project(w) for w in saved}
    for wheel in sorted(dest.glob("*.whl")):
        if wheel in saved:
            continue
        if _wheel_project(wheel) in built:
            wheel.unlink()
            print(f"removed {wheel.name}: another version of it was just downloaded")
        else:
            print(f"warning: {wheel.name} is not in this build but install() will install it; delete it")
    size = sum(w.stat().st_size for w in saved)
    print(f"{len(saved)} wheels, {size / 2**20:.1f} MiB in {dest}")
    if size > SIZE_BUDGET_BYTES:
        print(f"warning: over the {SIZE_BUDGET_BYTES / 2**20:.0f} MiB budget for what travels to the GPU")
    _print_ignore_hint(dest)
    return saved


def install(wheelhouse: Path, target: Path, packages: tuple[str, ...] = MISSING_ON_GPU_IMAGE) -> dict:
    """pip-install every wheel of wheelhouse into target, offline and without dependencies.

    Never raises: the caller (gpu_check) records the outcome and goes on. The record says what was
    installed, which of packages' modules are still not importable with target first on sys.path,
    pip's return code (None when pip did not run) and the tail of its output.
    """
    record: dict = {"wheelhouse": str(wheelhouse), "target": str(target), "installed": []}
    try:
        wheels = sorted(Path(wheelhouse).glob("*.whl"))
        if not wheels:
            what = "no wheels in" if Path(wheelhouse).is_dir() else "no wheelhouse folder"
            record |= {
                "returncode": None,
                "tail": f"{what} {wheelhouse}: build it with `python benchmarks/wheelhouse.py build` "
                "on a machine with a package index and bring it along with the checkout",
            }
        else:
            Path(target).mkdir(parents=True, exist_ok=True)
            # --upgrade: a rerun replaces what an earlier one put in target instead of skipping it.
            command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade"]
            command += ["--disable-pip-version-check", "--target", str(target), *map(str, wheels)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            # With --target pip installs into a scratch folder and moves it in whole: all or nothing.
            installed = ["-".join(w.name.split("-")[:2]) for w in wheels]  # name-version
            record |= {
                "installed": installed if done.returncode == 0 else [],
                "returncode": done.returncode,
                "tail": (done.stdout + done.stderr)[-TAIL_CHARS:],
            }
    except (OSError, subprocess.SubprocessError) as e:
        record |= {"returncode": None, "tail": f"{type(e).__name__}: {e}"}
    absent = _unfindable(tuple(map(_project, packages)), Path(target))
    record["missing"] = [r for r in packages if _project(r) in absent]
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wheelhouse.py",
        # The module's story without its last note (on imports), which is for readers of the code.
        description=__doc__.rsplit("\n\n", 1)[0],
        epilog=(
            "what the wheelhouse holds (one wheel each, no dependencies; the rest is on the image):\n  "
            + "\n  ".join(MISSING_ON_GPU_IMAGE)
            + "\n\nexamples:\n"
            "  python benchmarks/wheelhouse.py build                  # into .whl, for CPython 3.12\n"
            "  python benchmarks/wheelhouse.py build --dest /tmp/whl --python-version 3.11\n"
            "  python benchmarks/wheelhouse.py install --wheelhouse .whl --target .site\n"
            "  PYTHONPATH=$PWD/.site:$PWD python -m stable_audio_rt.runtime.cli --help"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{build,install}")
    b = sub.add_parser(
        "build",
        help="download the wheels (needs a package index)",
        description="Download one wheel per missing package for the GPU image's Python and platform.",
    )
    b.add_argument(
        "--dest", type=Path, default=DEFAULT_WHEELHOUSE, help="folder (default: .whl in the checkout)"
    )
    b.add_argument(
        "--python-version",
        default=DEFAULT_PYTHON_VERSION,
        help=f"the target interpreter's X.Y (default: {DEFAULT_PYTHON_VERSION}, the GPU image's)",
    )
    b.add_argument(
        "--platform",
        action="append",
        dest="platforms",
        metavar="TAG",
        help="a platform tag the wheels may carry, repeatable (default: manylinux_2_28 down to "
        "manylinux_2_5 and manylinux2014, x86_64)",
    )
    i = sub.add_parser(
        "install",
        help="install the wheels offline into a folder for PYTHONPATH",
        description="pip install --no-index --no-deps --target TARGET every wheel of the wheelhouse; "
        "prints a JSON record; exit status 1 when pip failed or a package is still not importable.",
    )
    i.add_argument(
        "--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE, help="default: .whl in the checkout"
    )
    i.add_argument("--target", type=Path, default=DEFAULT_TARGET, help="default: .site in the checkout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "build":
        try:
            build(args.dest, args.python_version, tuple(args.platforms or DEFAULT_PLATFORMS))
        except WheelhouseError as e:
            print(f"wheelhouse.py: error: {e}", file=sys.stderr)
            return 2
        return 0
    record = install(args.wheelhouse, args.target)
    print(json.dumps(record, indent=2))
    return 0 if record["returncode"] == 0 and not record["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
