#!/usr/bin/env python3
"""Fails when a workspace crate declares a dependency its code never names.

For every member's Cargo.toml: each `[dependencies]` entry must be named (`name::`, `use name`,
`name!`, `extern crate name`, with `-` as `_`) in `src/`; each `[dev-dependencies]` entry in
`src/`, `tests/`, `benches/` or `examples/`; each `[build-dependencies]` entry in `build.rs`. A
dependency kept on purpose (for its features, say) is exempt when the comment lines right above
it say "Not used directly". What `cargo machete` does, without installing it (CI runs this).

    python3 scripts/unused-deps.py
"""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "dependencies": ["src"],
    "dev-dependencies": ["src", "tests", "benches", "examples"],
    "build-dependencies": ["build.rs"],
}


def sources(crate: Path, places):
    for place in places:
        path = crate / place
        files = [path] if path.is_file() else sorted(path.rglob("*.rs")) if path.is_dir() else []
        for f in files:
            yield f.read_text(encoding="utf-8")


def exempt(manifest_lines, name):
    """Whether the comment block right above `name`'s line says it is kept on purpose."""
    for i, line in enumerate(manifest_lines):
        if re.match(rf"^{re.escape(name)}\s*=", line):
            j = i - 1
            while j >= 0 and manifest_lines[j].lstrip().startswith("#"):
                if "not used directly" in manifest_lines[j].lower():
                    return True
                j -= 1
    return False


def main():
    root = tomllib.loads((ROOT / "Cargo.toml").read_text())
    members = ["."] + root["workspace"]["members"]
    unused = []
    for member in members:
        crate = ROOT / member
        text = (crate / "Cargo.toml").read_text()
        manifest = tomllib.loads(text)
        lines = text.splitlines()
        for section, places in SECTIONS.items():
            code = "\n".join(sources(crate, places))
            for name in manifest.get(section, {}):
                ident = re.escape(name.replace("-", "_"))
                used = re.search(rf"\b{ident}(::|!)|\buse {ident}\b|\bextern crate {ident}\b", code)
                if not used and not exempt(lines, name):
                    unused.append(f"{member}/Cargo.toml [{section}] {name}")
    if unused:
        print("declared but never named in the code:\n  " + "\n  ".join(unused))
        return 1
    print(f"every dependency of the {len(members)} crates is used")
    return 0


if __name__ == "__main__":
    sys.exit(main())
