"""`tapestry datasets list|fetch`: the public data sets the adapters know, where they are, and getting them."""
from __future__ import annotations

import json
from pathlib import Path


def _local(ds) -> dict:
    """Where data set `ds` is found (the first root with it; else the first with a usable partial copy)."""
    from tapestry.etl.datasets import file_present, find, is_partial

    folder = find(ds, partial=True)
    if folder is None:
        return {"present": False, "path": None, "bytes": 0, "partial": False}
    sizes = [p.stat().st_size for p in (file_present(folder, f) for f in ds.files + ds.partial_files) if p]
    return {"present": True, "path": str(folder), "bytes": sum(sizes), "partial": is_partial(ds, folder)}


def cmd_list(args) -> None:
    from tapestry.config import dataset_roots
    from tapestry.etl.datasets import DATASETS

    rows = []
    for ds in DATASETS.values():
        rows.append({"name": ds.name, "title": ds.title, "source": ds.source, "size": ds.size, "terms": ds.terms,
                     "terms_url": ds.terms_url, "fetchable": bool(ds.downloads), **_local(ds)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("searched, in order: " + ", ".join(str(r) for r in dataset_roots())
          + " ($TAPESTRY_DATASETS, ../shared/datasets, the fetch cache $TAPESTRY_DATASETS_CACHE)")
    for r in rows:
        if not r["present"]:
            where = ("not present: `tapestry datasets fetch " + r["name"] + "`" if r["fetchable"]
                     else "not present; no pinned download (`tapestry datasets fetch " + r["name"] + "` says how)")
        elif r["partial"]:
            where = (f"PARTIAL copy at {r['path']} ({r['bytes'] / 1e6:.1f} MB; ML-1M: users 1-2999 only): "
                     f"`tapestry datasets fetch {r['name']}` gets the full data set")
        else:
            where = f"present at {r['path']} ({r['bytes'] / 1e6:.1f} MB)"
        print(f"\n{r['name']:<18} {r['title']}\n  source: {r['source']}  [{r['size']}]\n"
              f"  terms:  {r['terms']}\n  local:  {where}")


def cmd_fetch(args) -> None:
    from tapestry.config import dataset_roots
    from tapestry.etl.fetch import fetch

    folder = fetch(args.name, to=Path(args.to) if args.to else None)
    if args.to and Path(args.to).resolve() not in [r.resolve() for r in dataset_roots()]:
        print(f"[datasets] {Path(args.to)} is not searched by default: set TAPESTRY_DATASETS={Path(args.to)} "
              f"(or pass --data-dir {folder} to `tapestry etl`)")


def add_datasets_command(sub) -> None:
    """Register `datasets list|fetch` on the CLI's subparsers (no --tenant: data sets are not per tenant)."""
    d = sub.add_parser("datasets", help="the public data sets: list them (source, size, terms, where found) or "
                                        "fetch one (pinned sha256, verified, cached)")
    dsub = d.add_subparsers(dest="action", required=True)
    ls = dsub.add_parser("list", help="every known data set: source, size, terms, whether and where it is present")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(fn=cmd_list)
    f = dsub.add_parser("fetch", help="download NAME from its official source, verify its pinned sha256, unpack "
                                      "and cache it (resumes an interrupted download)")
    f.add_argument("name", metavar="NAME", help="a name from `tapestry datasets list` (ml-1m, gowalla, beauty, ...)")
    f.add_argument("--to", metavar="DIR", help="datasets root to install into (default: $TAPESTRY_DATASETS_CACHE, "
                                               "else ~/.local/share/tapestry/datasets)")
    f.set_defaults(fn=cmd_fetch)
