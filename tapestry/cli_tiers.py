"""`tapestry tier show|set --tenant T [--tier retrieval|feature|full]`: a tenant's serving tier
(tapestry.serving.tiers), changed without retraining and hot-swapped into a running multi-tenant server."""
from __future__ import annotations

import json

TIERS = ("retrieval", "feature", "full")   # tapestry.serving.tiers.TIERS (a test checks), without its imports
TIER_HELP = ("serving tier: retrieval (no reranker), feature (+ the feature reranker), full (+ the DLRM or fusion "
             "reranker the export has); default: the richest the export can serve")


def _tiers_of(export) -> tuple[str, list[str]]:
    from tapestry.serving.tiers import manifest_tier, supported_tiers

    manifest = json.loads((export / "artifacts" / "manifest.json").read_text())
    return manifest_tier(manifest), list(supported_tiers(manifest.get("reranker", "feature")))


def cmd_tier(args) -> None:
    from tapestry.serving import status as st
    from tapestry.serving.model_control import live_server, swap
    from tapestry.serving.tenant_repository import SwapError, export_path
    from tapestry.serving.tiers import set_tier

    try:
        if args.action == "show":
            export = export_path(args.tenant, args.root, args.version)
            tier, tiers = _tiers_of(export)
            print(f"tenant {args.tenant} {export.name}: tier {tier} (this export can serve: {', '.join(tiers)})")
            return
        if not args.tier:
            raise SystemExit("tapestry tier set: error: --tier is required")
        export = set_tier(args.tenant, args.tier, args.root, args.version)
        print(f"[tier] tenant {args.tenant}: {export.name} serves tier {args.tier}")
        server = live_server(args.root)
        if server and args.tenant in server.get("tenants", {}):
            info = swap(args.tenant, args.root, export.name)
            print(f"[tier] hot-swapped: the multi-tenant server serves {info['export_version']} for {args.tenant} "
                  "(`tapestry rollback` returns to the previous tier)")
        elif st.live_state(args.tenant, args.root):
            print(f"[tier] its single-tenant server still serves the previous export: restart it (`tapestry stop "
                  f"--tenant {args.tenant}`, then `tapestry serve`), or serve it with --tenants to hot-swap")
    except SwapError as e:
        raise SystemExit(f"tapestry tier: error: {e}")


def add_tier_command(add) -> None:
    """Register `tier` through the CLI's `add(name, fn, help)` helper (which adds --tenant and --root)."""
    t = add("tier", cmd_tier, "a tenant's serving tier: show it, or set it (a new export with the same models; "
                              "hot-swapped into a running multi-tenant server)")
    t.add_argument("action", choices=("show", "set"))
    t.add_argument("--tier", choices=TIERS, help=TIER_HELP)
    t.add_argument("--version", help="the export to show, or to start from (default: the latest)")
