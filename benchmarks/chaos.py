"""Chaos under load: four faults injected into a running multi-tenant server, one after the other, while a bounded
loopback load and a streaming ingest run; per fault: failed requests, the longest request, the time until every
answer is correct again, the tenant's readiness meanwhile, and data lost (must be 0).

    python benchmarks/chaos.py [--tenant ml100k] [--root DIR] [--clients 4] [--redis-down 10]

Built like benchmarks/ingest_freshness.py: ML-100K ETL, smoke training and an export under a temp root (or --root);
its own redis-server (persistent: AOF fsynced per write) loaded with the export; the tenant's export folder is a
size-limited tmpfs (mounted here, as root) holding v0001; `tapestry serve --tenants T --detach` (the real command:
its supervisor heals, its log is kept) with TAPESTRY_REDIS_URL; `tapestry ingest --follow` on a CSV file a writer
appends valid events to (50 users the load never asks for, 50 events/s). The load: --clients threads (half HTTP,
half gRPC), each request with a 5 s client timeout, known users drawn with a fixed seed, every answer compared with
the in-process pipeline's (the same export, the embedded store: the values Redis is loaded with).

Faults: (a) kill -9 of the tenant's user_encoder stub process; (b) its ensemble unloaded through Triton's admin API
(with the server's admin key); (c) Redis stopped for --redis-down seconds, then started again on its port; (d)
`tapestry export` while the export disk is filled (a filler file written until ENOSPC once the export's temp folder
appears): the export must fail cleanly, leave no partial version and the served v0001 untouched. After each fault
the writer pauses and ingest must have applied every line exactly once (data lost = lines missing + applied twice).
Writes benchmarks/results/chaos-<tenant>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).parent))
from ingest_freshness import HEADER, prepare, start_ingest, stop_ingest  # noqa: E402

from tapestry.artifacts import atomic_write_json  # noqa: E402
from tapestry.online.load import load_export_into_redis  # noqa: E402
from tapestry.online.local_redis import LocalRedis  # noqa: E402
from tapestry.online.store import REDIS_URL_ENV, RedisStore, StoreUnavailable  # noqa: E402
from tapestry.serving import model_control as mc  # noqa: E402
from tapestry.serving.client import RecommendClient, RecommendError, ensemble_name  # noqa: E402
from tapestry.serving.pipeline import RecommendPipeline  # noqa: E402
from tapestry.serving.supervisor import stub_processes  # noqa: E402
from tapestry.serving.triton_server import http_status  # noqa: E402

REQUEST_TIMEOUT_S = 5.0
QUIET = {"log": lambda *a, **k: None}


class Load:
    """Client threads in a closed loop; each request as (sent, seconds, user, items or None, strategy or error);
    the tenant's ensemble readiness polled every 20 ms."""

    def __init__(self, http_url, grpc_url, tenant, users, clients):
        self.records, self.ready, self._stop = [], [], threading.Event()
        self.tenant, self.model = tenant, ensemble_name(tenant, multi_tenant=True)
        self.ready_url = f"http://{http_url}/v2/models/{self.model}/ready"
        self.threads = [threading.Thread(target=self._run, args=(url, proto, users[i::clients]), daemon=True)
                        for i, (url, proto) in enumerate([(http_url, "http"), (grpc_url, "grpc")] * clients)
                        if i < clients] + [threading.Thread(target=self._poll, daemon=True)]

    def _run(self, url, protocol, users):
        with RecommendClient(url, protocol=protocol, model_name=self.model, timeout=REQUEST_TIMEOUT_S) as client:
            i = 0
            while not self._stop.is_set():
                user, sent = users[i % len(users)], time.monotonic()
                try:
                    r = client.recommend(self.tenant, user, k=10)
                    self.records.append((sent, time.monotonic() - sent, user, r.item_ids, r.strategy))
                except RecommendError as e:
                    self.records.append((sent, time.monotonic() - sent, user, None, str(e)[:200]))
                    time.sleep(0.01)   # a failing server answers at once: do not spin
                i += 1

    def _poll(self):
        while not self._stop.is_set():
            self.ready.append((time.monotonic(), http_status(self.ready_url, timeout=1.0)))
            time.sleep(0.02)

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(timeout=30)


class Writer:
    """Appends valid events for its own users at a steady rate; remembers what each user should end up with."""

    def __init__(self, source: Path, users, items, rate: float = 50.0):
        self.source, self.users, self.items, self.rate = source, users, items, rate
        self.sent: dict[str, list[str]] = {u: [] for u in users}
        self._go, self._stop, self._n = threading.Event(), threading.Event(), 0
        self._go.set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        rng = random.Random(7)
        with open(self.source, "a", encoding="utf-8") as f:
            while not self._stop.is_set():
                self._go.wait()
                for _ in range(5):
                    user, item = rng.choice(self.users), rng.choice(self.items)
                    f.write(f"{user},{item},view,{1_900_000_000 + self._n}\n")
                    self.sent[user].append(item)
                    self._n += 1
                f.flush()
                time.sleep(5 / self.rate)

    def pause(self):
        self._go.clear()
        time.sleep(0.3)   # a write in progress finishes


def check_ingest(writer: Writer, url: str, tenant: str, initial: dict, item_idx: dict, timeout=120.0) -> dict:
    """Wait until ingest committed the whole file, then compare every writer user's stored history with what was
    written: lines lost and lines applied twice."""
    writer.pause()
    size, key, deadline = writer.source.stat().st_size, str(writer.source.resolve()), time.monotonic() + timeout
    store = RedisStore(url, tenant)
    while True:
        with contextlib.suppress(StoreUnavailable):
            if store.committed_offset(key) >= size:
                break
        if time.monotonic() > deadline:
            return {"error": f"ingest did not catch up within {timeout:.0f}s"}
        time.sleep(0.1)
    lost = duplicated = 0
    for user, items in writer.sent.items():
        got = Counter((store.get(user).history.tolist())[len(initial[user]):])
        want = Counter(item_idx[i] for i in items)
        lost += sum((want - got).values())
        duplicated += sum((got - want).values())
    store.close()
    writer._go.set()
    return {"events_written": sum(len(v) for v in writer.sent.values()), "lost": lost, "applied_twice": duplicated}


def window(load: Load, expected: dict, start: float, end: float, back: float | None = None) -> dict:
    """What the load saw from ``start`` (the fault) to ``end``."""
    rows = [r for r in load.records if start <= r[0] < end]
    wrong = [r[0] for r in rows if r[3] != expected[r[2]]]
    correct_from = max(wrong, default=start)
    not_ready = [t for t, code in load.ready if start <= t < end and code != 200]
    out = {"requests": len(rows), "failed": sum(r[3] is None for r in rows),
           "not_correct": len(wrong), "longest_request_s": round(max((r[1] for r in rows), default=0.0), 3),
           "correct_again_after_s": round(correct_from - start, 2) if wrong else 0.0,
           "tenant_not_ready_s": round(len(not_ready) * 0.02, 2) if not_ready else 0.0,
           "readiness_false_observed": bool(not_ready),
           "errors": dict(Counter(r[4][:90] for r in rows if r[3] is None).most_common(3)),
           "strategies": dict(Counter(r[4] for r in rows if r[3] is not None))}
    if back is not None:
        out["correct_after_redis_back_s"] = round(max(0.0, correct_from - back), 2) if wrong else 0.0
    return out


def wait_correct(load: Load, expected: dict, since: float, timeout: float = 60.0, settle: float = 3.0) -> float:
    """Wait until ``settle`` s of answers, all correct, came after ``since``; returns when the load is settled."""
    deadline = time.monotonic() + timeout
    time.sleep(max(0.0, since + REQUEST_TIMEOUT_S + 1.0 - time.monotonic()))   # a hung request has ended by then
    while time.monotonic() < deadline:
        recent = [r for r in load.records if r[0] >= since]
        bad = [r[0] for r in recent if r[3] != expected[r[2]]]
        if len([r for r in recent if r[0] > max(bad, default=since)]) >= 20 and \
                time.monotonic() - max(bad, default=since) >= settle:
            break
        time.sleep(0.2)
    return time.monotonic()


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def fill_during_export(tenant: str, root: Path, export_dir: Path, log: Path) -> dict:
    """`tapestry export` in a subprocess; once its temp folder appears, fill the export disk; report what is left."""
    before = sorted(p.name for p in export_dir.iterdir())
    v1 = digest(export_dir / "v0001")
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tapestry.cli", "export", "--tenant", tenant, "--root",
                                 str(root)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    while proc.poll() is None and not any(p.name.startswith(".tmp-") for p in export_dir.iterdir()):
        time.sleep(0.02)
    filled_at, filler, written = time.monotonic(), export_dir / "filler", 0
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
                written += 1 << 20
    except OSError as e:
        full = e.errno
    code = proc.wait(timeout=600)
    tail = log.read_text(errors="replace")[-2000:]
    filler.unlink()
    after = sorted(p.name for p in export_dir.iterdir())
    return {"filled_at": filled_at, "filler_mb": written >> 20, "enospc": full == 28, "export_exit_code": code,
            "export_error": next((ln for ln in reversed(tail.splitlines()) if "No space left" in ln), tail[-300:]),
            "folders_before": before, "folders_after": after,
            "partial_version_left": after != before, "latest": (export_dir / "LATEST").read_text().strip(),
            "served_export_unchanged": digest(export_dir / "v0001") == v1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenant", default="ml100k")
    p.add_argument("--root", type=Path, help="artifact root (default: a temp root, built and deleted)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--redis-down", type=float, default=10.0, help="seconds Redis stays stopped")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind the ExitStack: stop every process
    report = {"benchmark": "chaos", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tenant": args.tenant, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "clients": args.clients, "request_timeout_s": REQUEST_TIMEOUT_S, "scenarios": {}}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tapestry-chaos-")))
        root = (args.root or work / "artifacts").resolve()
        export = prepare(args.tenant, root)
        art = export / "artifacts"
        # The export disk: a tmpfs of 3x the export's size holding v0001 (what `tapestry export` writes into).
        export_dir = export.parent
        size_mb = max(16, 3 * sum(f.stat().st_size for f in export_dir.rglob("*") if f.is_file()) >> 20)
        staging = work / "export-staging"
        shutil.copytree(export_dir, staging, symlinks=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(export_dir)],
                                 capture_output=True, text=True)
        if mounted.returncode == 0:
            stack.callback(subprocess.run, ["umount", "-l", str(export_dir)], check=False)
            shutil.copytree(staging, export_dir, symlinks=True, dirs_exist_ok=True)
        report["export_disk"] = (f"tmpfs of {size_mb} MB mounted on {export_dir}" if mounted.returncode == 0 else
                                 f"no tmpfs ({mounted.stderr.strip()}): scenario (d) not run")

        users = pl.read_parquet(art / "users.parquet").select("user_id", "history")
        ids = users["user_id"].to_list()
        rng = np.random.default_rng(0)
        chosen = [ids[i] for i in rng.choice(len(ids), args.users + 50, replace=False)]
        load_users, ingest_users = chosen[:args.users], chosen[args.users:]
        local = RecommendPipeline.from_artifacts(art)
        expected = {u: local.recommend(args.tenant, u, k=10).item_ids for u in load_users}
        initial = dict(zip(ids, users["history"].to_list()))
        items = pl.read_parquet(art / "items.parquet").filter(pl.col("item_idx") > 0)
        item_idx = dict(items.select("item_id", "item_idx").iter_rows())

        redis = stack.enter_context(LocalRedis(work / "redis", persistent=True))
        load_export_into_redis(art, redis.url, **QUIET)
        env = {**os.environ, REDIS_URL_ENV: redis.url}
        serve = subprocess.run([sys.executable, "-m", "tapestry.cli", "serve", "--tenants", args.tenant, "--root",
                                str(root), "--detach", "--timeout", "600"], env=env, capture_output=True, text=True)
        if serve.returncode != 0:
            raise SystemExit(f"serve failed: {serve.stdout}{serve.stderr}")
        stack.callback(subprocess.run, [sys.executable, "-m", "tapestry.cli", "stop", "--tenant", args.tenant,
                                        "--root", str(root)], check=False)
        server = mc.live_server(root)
        source = work / "events.csv"
        source.write_text(HEADER)
        ingest = start_ingest(args.tenant, root, source, redis.url, 0.1, work / "ingest.log")
        stack.callback(stop_ingest, ingest)
        writer = Writer(source, ingest_users, list(item_idx))
        writer.thread.start()
        load = Load(server["http_url"], server["grpc_url"], args.tenant, load_users, args.clients)
        load.start()
        stack.callback(load.stop)
        time.sleep(5.0)
        report["baseline"] = window(load, expected, time.monotonic() - 4.0, time.monotonic())
        print(f"[chaos] baseline {report['baseline']}", flush=True)

        def scenario(name, inject):
            t0 = time.monotonic()
            detail = inject() or {}
            back = detail.pop("back", None)
            end = wait_correct(load, expected, back or t0)
            result = {**window(load, expected, t0, end, back), **detail,
                      "data": check_ingest(writer, redis.url, args.tenant, initial, item_idx)}
            result["data_lost"] = result["data"].get("lost", 0) + result["data"].get("applied_twice", 0)
            report["scenarios"][name] = result
            print(f"[chaos] {name}: {json.dumps(result)}", flush=True)

        def kill_stage():
            name = f"{args.tenant}__user_encoder__{export.name}"
            os.kill(stub_processes(server["triton_pid"])[name][0], signal.SIGKILL)
            return {"killed": name}

        def unload():
            mc.ModelControl.of(mc.live_server(root)).unload([ensemble_name(args.tenant, multi_tenant=True)])
            return {"unloaded": ensemble_name(args.tenant, multi_tenant=True)}

        def redis_outage():
            redis.stop()
            time.sleep(args.redis_down)
            redis.start()
            return {"redis_down_s": args.redis_down, "back": time.monotonic()}

        scenario("a_kill_stage_process", kill_stage)
        scenario("b_unload_ensemble_admin_api", unload)
        scenario("c_redis_stopped", redis_outage)
        if mounted.returncode == 0:
            scenario("d_disk_full_during_export", lambda: fill_during_export(args.tenant, root, export_dir,
                                                                             work / "export.log"))
        load.stop()
        log = (root / "_server" / "serve.log").read_text(errors="replace")
        report["supervisor_log"] = [ln for ln in log.splitlines() if "[supervisor]" in ln]
        report["ingest_log"] = (work / "ingest.log").read_text(errors="replace").splitlines()[-8:]
        report["note"] = ("failed: requests answered with an error in the scenario's window (fault to settled); "
                          "correct_again_after_s: from the fault until every later answer equals the in-process "
                          "pipeline's (for c also from Redis's return); data_lost: ingest lines missing from Redis "
                          "plus lines applied twice, checked after each scenario")
    out = Path(__file__).parent / "results" / f"chaos-{args.tenant}.json"
    atomic_write_json(out, report)
    print(f"written {out}")


if __name__ == "__main__":
    main()
