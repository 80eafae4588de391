"""`stvg-ros models list|pull|verify|path`: the model files named by models/*.yaml manifests."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from stvg_ros.core import model_registry as registry


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("models", help="list, pull and verify model files from models/ manifests")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every manifest and whether its files are on this machine")
    listing.add_argument("--json", action="store_true", help="print JSON")
    pull = actions.add_parser("pull", help="build (local models) or download (hosted models) every file of NAME")
    pull.add_argument("names", nargs="+", metavar="NAME")
    pull.add_argument("--force", action="store_true", help="rebuild / re-download files already in the cache")
    pull.add_argument("--json", action="store_true", help="print JSON")
    verify = actions.add_parser("verify", help="check files are present and match the manifest's sha256")
    verify.add_argument("names", nargs="*", metavar="NAME", help="default: every manifest")
    verify.add_argument("--json", action="store_true", help="print JSON")
    path = actions.add_parser("path", help="print the local path of a model file (exit 1 when missing)")
    path.add_argument("name", metavar="NAME")
    path.add_argument("--file", default=None, help="file name or format (default: the manifest's first file)")
    return parser


def _listing() -> list[dict]:
    rows = []
    for name, manifest in sorted(registry.load_manifests().items()):
        files = []
        for f in manifest.files:
            found = registry.find_file(manifest, f)
            files.append(
                {
                    "name": f.name,
                    "format": f.format,
                    "present": found is not None,
                    "path": str(found) if found else None,
                    "source": f.source_kind,
                    "pinned": f.sha256 is not None,
                }
            )
        rows.append(
            {
                "name": name,
                "kind": manifest.kind,
                "architecture": manifest.architecture,
                "quantization": manifest.quantization,
                "description": manifest.description,
                "manifest": str(manifest.path),
                "files": files,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "list":
            rows = _listing()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    present = sum(f["present"] for f in row["files"])
                    print(f"{row['name']:28s} {row['kind']:9s} {present}/{len(row['files'])} files  {row['description']}")
            return 0
        if args.action == "pull":
            result = {name: {k: str(v) for k, v in registry.pull(name, force=args.force).items()} for name in args.names}
            print(json.dumps(result, indent=2) if args.json else "\n".join(p for r in result.values() for p in r.values()))
            return 0
        if args.action == "verify":
            names = args.names or sorted(registry.load_manifests())
            result = {name: [asdict(c) for c in registry.verify(name)] for name in names}
            bad = any(c["status"] in ("missing", "mismatch") for checks in result.values() for c in checks)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                for name, checks in result.items():
                    for c in checks:
                        print(f"{name:28s} {c['name']:36s} {c['status']:9s} {c['message']}")
            return 1 if bad else 0
        if args.action == "path":
            if args.name not in registry.load_manifests():  # a name, never a path to echo back
                print(f"stvg-ros models path: error: no model named {args.name!r}; see `stvg-ros models list`",
                      file=sys.stderr)  # fmt: skip
                return 2
            print(registry.resolve(args.name, args.file))
            return 0
    except registry.ModelRegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2
