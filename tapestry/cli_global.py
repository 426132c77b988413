"""`tapestry settings --tenant T [--share-for-global on|off]` and `tapestry global train|finetune`: tenant cold start.

    tapestry settings --tenant shopA --share-for-global on     # opt in (default: off)
    tapestry global train                                      # pre-train on every opted-in tenant
    tapestry global finetune --tenant newshop                  # start a new tenant from the global model
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tapestry.config import validate_tenant


def cmd_settings(args) -> None:
    from tapestry.tenant_settings import load_settings, save_settings

    settings = load_settings(args.tenant, args.root)
    if args.share_for_global is not None:
        settings.share_for_global = args.share_for_global == "on"
        save_settings(args.tenant, settings, args.root)
    print(json.dumps({"tenant": args.tenant, **dataclasses.asdict(settings)}))


def _overrides(args) -> dict:
    out = json.loads(args.params) if args.params else {}
    if not isinstance(out, dict):
        raise ValueError("--params must be a JSON object of FoundationConfig fields")
    return out


def cmd_global(args) -> None:
    from tapestry.training.foundation import FoundationConfig
    from tapestry.training.global_model import finetune_tenant, train_global

    if args.action == "train":
        if args.tenant:
            raise ValueError("`global train` reads every opted-in tenant; --tenant applies to `global finetune`")
        train_global(args.root, FoundationConfig(**_overrides(args)), device=args.device)
    else:
        if not args.tenant:
            raise ValueError("`global finetune` needs --tenant T (the tenant to start from the global model)")
        finetune_tenant(args.tenant, args.root, device=args.device, **_overrides(args))


def add_global_commands(sub) -> None:
    """Register `settings` and `global` on the CLI's subparsers."""
    s = sub.add_parser("settings", help="show or change a tenant's settings (opt-in to the global model)")
    s.add_argument("--tenant", required=True, type=validate_tenant)
    s.add_argument("--root", type=Path, default=None, help="artifact root (default $TAPESTRY_HOME or ./artifacts)")
    s.add_argument("--share-for-global", choices=("on", "off"),
                   help="on: the tenant's data may pre-train the global model (default off)")
    s.set_defaults(fn=cmd_settings)
    g = sub.add_parser("global", help="the global model: pre-train on opted-in tenants, fine-tune a new tenant")
    g.add_argument("action", choices=("train", "finetune"))
    g.add_argument("--tenant", type=validate_tenant, help="finetune: the tenant to start from the global model")
    g.add_argument("--root", type=Path, default=None, help="artifact root (default $TAPESTRY_HOME or ./artifacts)")
    g.add_argument("--params", help='JSON FoundationConfig overrides, e.g. \'{"epochs": 5, "hidden_dim": 32}\'')
    g.add_argument("--device", default="auto")
    g.set_defaults(fn=cmd_global)
