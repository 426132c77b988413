"""Locust load for the served ensemble over Triton's HTTP/KServe endpoint (beside benchmarks/concurrency.py, the gRPC
load generator). Plain HTTP + JSON, no tapestry import: it runs in locust's own environment.

    pip install 'tapestry[load]'          # or any venv with locust; `make locust` makes .venv-load itself
    TAPESTRY_TENANT=ml1m TAPESTRY_USERS_FILE=users.txt TAPESTRY_API_KEY=tpk_... \\
        locust -f benchmarks/locustfile.py --headless -u 8 -r 8 -t 20s --host http://127.0.0.1:8000

benchmarks/locust_run.py does a bounded headless run against a running `tapestry serve` (and writes its numbers
under benchmarks/results/). Environment:
- TAPESTRY_TENANT (required): the tenant; TAPESTRY_MODEL: the model to call (default `<tenant>__recommend`, a
  multi-tenant server; `recommend` for `tapestry serve --tenant T`);
- TAPESTRY_USERS_FILE: user ids, one a line (default: the single id in TAPESTRY_USER, else an anonymous id);
- TAPESTRY_API_KEY: the tenant's key, sent as the `tapestry-api-key` header (tapestry.serving.auth), if keys are on;
- TAPESTRY_K (default 10).
A request counts as failed unless Triton answers 200 with ITEM_IDS; the error text is what locust reports.
"""
from __future__ import annotations

import json
import os
import random

from locust import HttpUser, between, task

KEY_HEADER = "tapestry-api-key"   # tapestry.serving.auth.KEY_HEADER
TENANT = os.environ.get("TAPESTRY_TENANT", "")
MODEL = os.environ.get("TAPESTRY_MODEL") or f"{TENANT}__recommend"
K = int(os.environ.get("TAPESTRY_K", "10"))


def _users() -> list[str]:
    path = os.environ.get("TAPESTRY_USERS_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return [os.environ.get("TAPESTRY_USER", "locust-anonymous-visitor")]


USERS = _users()


class RecommendUser(HttpUser):
    wait_time = between(0, 0)   # closed loop: the next request as soon as the answer came

    def on_start(self) -> None:
        if not TENANT:
            raise RuntimeError("set TAPESTRY_TENANT (and TAPESTRY_USERS_FILE, TAPESTRY_API_KEY if keys are on)")
        key = os.environ.get("TAPESTRY_API_KEY")
        self.headers = {"Content-Type": "application/json", **({KEY_HEADER: key} if key else {})}
        # A batched export (max_batch_size > 0) takes a leading batch dimension: one user is [1, 1].
        meta = self.client.get(f"/v2/models/{MODEL}", headers=self.headers, name="metadata").json()
        tenant_shape = next((i["shape"] for i in meta.get("inputs", []) if i["name"] == "TENANT"), [1])
        self.shape = [1, 1] if len(tenant_shape) == 2 else [1]
        self.rng = random.Random()

    @task
    def recommend(self) -> None:
        user = self.rng.choice(USERS)
        body = {"inputs": [{"name": n, "datatype": d, "shape": self.shape, "data": [v]} for n, d, v in (
            ("TENANT", "BYTES", TENANT), ("USER_ID", "BYTES", user), ("K", "INT32", K),
            ("EXCLUDE_ITEM_IDS", "BYTES", ""))]}
        with self.client.post(f"/v2/models/{MODEL}/infer", data=json.dumps(body), headers=self.headers,
                              name="recommend", catch_response=True) as resp:
            if resp.status_code != 200:
                try:
                    resp.failure(f"HTTP {resp.status_code}: {resp.json().get('error', '')}")
                except ValueError:
                    resp.failure(f"HTTP {resp.status_code}")
            elif not any(o["name"] == "ITEM_IDS" for o in resp.json().get("outputs", [])):
                resp.failure("no ITEM_IDS in the answer")
            else:
                resp.success()
