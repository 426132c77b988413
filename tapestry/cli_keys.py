"""`tapestry keys create|list|revoke --tenant T`: the tenant API keys (tapestry.serving.auth)."""
from __future__ import annotations

import json
import sys


def cmd_keys(args) -> None:
    from tapestry.serving import auth

    try:
        if args.action == "create":
            key_id, plaintext = auth.create_key(args.tenant, args.root, name=args.name or "")
            # The plaintext on stdout alone (KEY=$(tapestry keys create ...)), what it is on stderr.
            print(f"[keys] tenant {args.tenant}: key {key_id} created. It is shown only this once (only its hash "
                  f"is stored): keep it now. Clients send it as the '{auth.KEY_HEADER}' header (HTTP) or "
                  f"metadata (gRPC), e.g. {auth.API_KEY_ENV}=<key> tapestry recommend --tenant {args.tenant} "
                  "--user U", file=sys.stderr)
            print(plaintext)
        elif args.action == "list":
            keys = auth.list_keys(args.tenant, args.root)
            if args.json:
                print(json.dumps(keys, indent=2))
            elif not keys:
                print(f"tenant {args.tenant}: no API key (keys are off for it on a loopback server)")
            else:
                print(f"tenant {args.tenant}: {sum(k['revoked_at'] is None for k in keys)} active key(s)")
                for k in keys:
                    state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
                    print(f"  {k['id']}  {state:<32} created {k['created_at']}  {k['name']}")
        else:
            if not args.id:
                raise SystemExit("tapestry keys revoke: error: --id KEY_ID is required (`tapestry keys list`)")
            k = auth.revoke_key(args.tenant, args.root, args.id)
            print(f"[keys] tenant {args.tenant}: key {k['id']} revoked at {k['revoked_at']}; refused from the next "
                  "request on (the serving stages re-read the key file)")
    except auth.KeyStoreError as e:
        raise SystemExit(f"tapestry keys: error: {e}")


def add_keys_command(add) -> None:
    """Register `keys` through the CLI's `add(name, fn, help)` helper (which adds --tenant and --root)."""
    k = add("keys", cmd_keys, "tenant API keys: create (shown once), list (no secrets), revoke")
    k.add_argument("action", choices=("create", "list", "revoke"))
    k.add_argument("--name", help="create: a label for the key (e.g. the client it is for)")
    k.add_argument("--id", help="revoke: the key id `list` shows")
    k.add_argument("--json", action="store_true", help="list: machine-readable output")
