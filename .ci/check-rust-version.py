#!/usr/bin/env python3
"""Fails unless Cargo.toml's rust-version is at least the highest
rust-version any locked dependency declares (from `cargo metadata`), so the
minimum the README states is one the build can meet."""
import json
import subprocess
import sys


def version(text):
    return tuple(int(part) for part in text.split("."))


meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked"]))
ours = next(p for p in meta["packages"] if p["id"] in meta["workspace_members"])
stated = ours.get("rust_version")
if not stated:
    sys.exit("Cargo.toml states no rust-version")
needed = max(
    (version(p["rust_version"]), p["name"])
    for p in meta["packages"]
    if p.get("rust_version") and p["id"] not in meta["workspace_members"]
)
if version(stated) < needed[0]:
    sys.exit(f"rust-version {stated} is below {'.'.join(map(str, needed[0]))}, "
             f"which {needed[1]} needs: raise it in Cargo.toml and the README")
print(f"rust-version {stated} covers every locked dependency "
      f"(highest: {needed[1]}, {'.'.join(map(str, needed[0]))})")
