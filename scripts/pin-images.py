"""Write the exact versions the images install: runtime/constraints.txt and operator/constraints.txt.

    .venv/bin/python scripts/pin-images.py           # rewrite both from the installed environment
    .venv/bin/python scripts/pin-images.py --check   # exit 1 if a package is missing or not needed

The Dockerfiles install their extra with `pip install -c <image>/constraints.txt`, so an image
built today and one built next month hold the same packages. The versions are the ones this
environment (`pip install -e '.[dev]'`) resolved and the test suite ran against; the closure
of each extra is read from the installed packages' metadata, for Linux on CPython 3.11 (the
images' python:3.11-slim).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
IMAGES = {"runtime": ROOT / "runtime" / "constraints.txt", "operator": ROOT / "operator" / "constraints.txt"}
HEADER = (
    "# The exact versions the {image} image installs (pip install -c); written by scripts/pin-images.py\n"
    "# from the environment the test suite ran in. Rewrite it after changing a dependency.\n"
)
ENVIRONMENT = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}


def _wanted(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    if not extras:
        return requirement.marker.evaluate({**ENVIRONMENT, "extra": ""})
    return any(requirement.marker.evaluate({**ENVIRONMENT, "extra": extra}) for extra in extras)


def closure(extra: str) -> dict[str, str]:
    """Every distribution `modelfleet[extra]` needs, by canonical name, with its installed version."""
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [("modelfleet", frozenset({extra}))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = metadata.distribution(name)
        if canonicalize_name(name) != "modelfleet":
            found[canonicalize_name(name)] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if _wanted(requirement, extras):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def render(image: str) -> str:
    pins = closure(image)
    return HEADER.format(image=image) + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def pinned(path: Path) -> dict[str, str]:
    """The constraints file's pins, by canonical name."""
    pins = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def problems(image: str, path: Path) -> list[str]:
    """What the file lacks or holds in vain: the names are checked, not the versions (an environment
    installed later may resolve newer ones; the image still gets the pinned ones)."""
    needed, pins = set(closure(image)), pinned(path)
    missing = [f"{name} is not pinned" for name in sorted(needed - set(pins))]
    unused = [f"{name} is pinned but not needed" for name in sorted(set(pins) - needed)]
    return missing + unused + [f"{name} has no version" for name, version in pins.items() if not version]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether every needed package is pinned")
    args = parser.parse_args(argv)
    found = []
    for image, path in IMAGES.items():
        rel = path.relative_to(ROOT)
        if args.check:
            found += [f"{rel}: {problem}" for problem in problems(image, path)]
        else:
            path.write_text(render(image))
            print(f"wrote {rel}")
    if found:
        print("\n".join(found) + "\n(run scripts/pin-images.py to rewrite the constraints)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
