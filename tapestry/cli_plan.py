"""`tapestry plan`: the sizing worksheet (tapestry.planning's arithmetic) as a table, or as JSON with --json."""
from __future__ import annotations

import json
from pathlib import Path


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def render(sheet: dict) -> str:
    """The worksheet as text: three sections, every figure with the unit it is in."""
    from tapestry.planning import REVERSE_MAP_BYTES

    req = sheet["request"]
    n = req["items"]
    users = f"a DLRM user table of {req['users']:,} users" if req["users"] else "no DLRM user table"
    lines = [f"tapestry plan: {n:,} items x {req['dim']} dims ({req['dtype']}), {users}, {req['shards']} shards, "
             f"{req['qps']:,g} req/s", "",
             "ANN index (the retrieval stage holds one per replica)"]
    lines.append(f"  {'kind':<28}{'factory':<22}{'bytes/item':>12}{'file':>13}{'in memory':>13}  note")
    for i in sheet["indexes"]:
        lines.append(f"  {i['kind']:<28}{i['factory']:<22}{i['bytes'] / n:>12.1f}{_size(i['bytes']):>13}"
                     f"{_size(i['in_memory_bytes']):>13}  {i['note']}")
    lines.append(f"  in memory = file + the IDMap2 id -> position map FAISS rebuilds on load "
                 f"({REVERSE_MAP_BYTES} B/item)")
    lines += ["", f"Embedding tables (DLRM ranker, TorchRec): {req['dtype']} weights + {req['optimizer']} state "
                  "(float32) while training"]
    for t in sheet["tables"]:
        lines.append(f"  {t['name']:<8}{t['rows']:>14,} rows x {t['cols']} cols")
    lines.append(f"  {'plan':<16}{'largest shard':>16}{'all shards':>16}  note")
    for p in sheet["sharding"]:
        lines.append(f"  {p['plan']:<16}{_size(p['largest']):>16}{_size(p['total']):>16}  {p['note']}")
    lines.append(f"  serving (every replica: whole tables, no optimizer state): {_size(sheet['serving_tables_bytes'])}")
    one = sheet["per_replica"]
    lines += ["", f"Per replica: {_size(one['total_bytes'])} = index {one['index']} {_size(one['index_bytes'])} "
                  f"+ encoder item table {_size(one['encoder_item_table_bytes'])} + DLRM tables "
                  f"{_size(one['dlrm_tables_bytes'])} (when a DLRM reranks); Python and Triton processes not counted"]
    r = sheet["replicas"]
    lines += ["", "Serving replicas",
              f"  per-core throughput: {r['per_core_qps']:,.1f} req/s  [{r['source']}: {r['figure']}]",
              f"  cores   = ceil({req['qps']:,g} / {r['per_core_qps']:,.1f}) = {r['cores']:,}",
              f"  replicas of {req['cores_per_replica']} core(s) = {r['replicas']:,}"]
    lines += [f"  note: {c}" for c in r["caveats"]]
    return "\n".join(lines)


def cmd_plan(args) -> None:
    from tapestry.planning import PlanRequest, plan

    req = PlanRequest(items=args.items, dim=args.dim, qps=args.qps, users=args.users, dtype=args.dtype,
                      shards=args.shards, optimizer=args.optimizer, cores_per_replica=args.cores_per_replica,
                      per_core_qps=args.per_core_qps)
    sheet = plan(req, args.results) if args.results else plan(req)
    print(json.dumps(sheet, indent=2) if args.json else render(sheet))


def add_plan_command(sub) -> None:
    """Register `plan` (no --tenant: it sizes a deployment, it reads no artifacts)."""
    from tapestry.planning import DTYPE_BYTES, OPTIMIZER_STATE

    p = sub.add_parser("plan", help="sizing worksheet: index memory (Flat / IVF / HNSW), embedding tables per "
                                    "sharding plan, serving replicas from the measured per-core throughput")
    p.add_argument("--items", type=int, required=True, help="catalogue size")
    p.add_argument("--dim", type=int, required=True, help="embedding width")
    p.add_argument("--qps", type=float, required=True, help="peak requests per second to serve")
    p.add_argument("--users", type=int, default=0, help="rows of a DLRM user table (default 0: none, as "
                                                         "DLRMConfig.user_table=False)")
    p.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="float32",
                   help="embedding and exact-vector storage (default float32, what the export writes)")
    p.add_argument("--shards", type=int, default=2, help="training processes the tables are sharded over")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZER_STATE), default="rowwise_adagrad",
                   help="the fused sparse optimizer (default rowwise_adagrad, DLRMConfig's)")
    p.add_argument("--cores-per-replica", type=int, default=1, help="CPU cores per serving replica")
    p.add_argument("--per-core-qps", type=float, help="your own measured requests/s per core (default: this "
                                                      "repository's benchmarks/results)")
    p.add_argument("--results", type=Path, help="benchmark results folder (default benchmarks/results)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_plan)
