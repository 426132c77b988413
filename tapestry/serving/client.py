"""Client for the ``recommend`` ensemble (tensor contract: docs/architecture.md, "The serving ensemble")."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from tritonclient.utils import InferenceServerException

from tapestry.serving.auth import API_KEY_ENV, KEY_HEADER

# ARM: during an A/B experiment; REASONS: exports made since explanations (tapestry.serving.explain)
OUTPUTS = ("ITEM_IDS", "SCORES", "TITLES", "STRATEGY", "IGNORED_ITEMS", "ARM", "REASONS")
ENSEMBLE = "recommend"


def ensemble_name(tenant: str, multi_tenant: bool = False) -> str:
    """The model to call for ``tenant``: ``recommend`` on a one-tenant server (`tapestry serve --tenant T`),
    ``<tenant>__recommend`` on a multi-tenant one (`tapestry serve --tenants ...`, tapestry.serving.multi_tenant);
    e.g. ``RecommendClient(url, model_name=ensemble_name("acme", multi_tenant=True))``."""
    return f"{tenant}__{ENSEMBLE}" if multi_tenant else ENSEMBLE


@dataclass
class RecommendationResult:
    item_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    strategy: str = ""        # personalized | session | popularity
    ignored_items: int = 0    # RECENT_ITEM_IDS the served catalogue does not know (skipped, not an error)
    arm: str = ""             # the A/B experiment's arm that answered ("": no experiment runs)
    reasons: list[str] = field(default_factory=list)   # one JSON reason per item (tapestry.serving.explain); [] from
                                                       # an export made before explanations

    def reason_texts(self) -> list[str]:
        """Each reason's "text" (e.g. "because you watched Toy Story (1995); shares genre: Comedy")."""
        import json

        return [json.loads(r).get("text", "") for r in self.reasons]


class RecommendError(Exception):
    """A request the server (or the transport) rejected.

    ``status`` is the server's status as a string: the HTTP code for HTTP (``"400"``), the gRPC code name for gRPC
    (``"INVALID_ARGUMENT"``); ``None`` when unknown. ``message`` is the server's message.
    """

    def __init__(self, message: str, status: str | None = None, protocol: str | None = None) -> None:
        super().__init__(f"[{status}] {message}" if status else message)
        self.message = message
        self.status = status
        self.protocol = protocol

    @property
    def invalid_argument(self) -> bool:
        return self.status in ("400", "INVALID_ARGUMENT")

    @classmethod
    def from_triton(cls, exc: InferenceServerException, protocol: str) -> "RecommendError":
        status = exc.status()
        if status is not None:
            status = str(status).removeprefix("StatusCode.")  # grpc.StatusCode.INVALID_ARGUMENT -> INVALID_ARGUMENT
        message = exc.message() or str(exc)
        if "has no available versions" in message:   # unloaded: the supervisor repairs a broken tenant so
            message += (" (not loaded now: a tenant being repaired answers again within seconds, "
                        "`tapestry status` says which)")
        return cls(message, status=status, protocol=protocol)


def _to_str(x) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else str(x)


class RecommendClient:
    """``RecommendClient("127.0.0.1:8000")`` (HTTP) or ``RecommendClient("127.0.0.1:8001", protocol="grpc")``.

    ``api_key``: the tenant's key (`tapestry keys create`), sent with every inference request as the
    ``tapestry-api-key`` header (HTTP) / metadata (gRPC); default ``$TAPESTRY_API_KEY``; none: no key is sent."""

    def __init__(self, url: str, protocol: str = "http", timeout: float = 10.0, model_name: str = "recommend",
                 api_key: str | None = None):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        for scheme in ("http://", "grpc://"):
            url = url.removeprefix(scheme)
        self.url, self.protocol, self.timeout, self.model_name = url, protocol, float(timeout), model_name
        self._outputs: tuple[str, ...] | None = None
        self._batched = False     # the served model has max_batch_size > 0: tensors get a leading batch dimension
        if protocol == "http":
            import tritonclient.http as tc

            self._client = tc.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            import tritonclient.grpc as tc

            self._client = tc.InferenceServerClient(url)
        self._tc = tc
        api_key = os.environ.get(API_KEY_ENV) if api_key is None else api_key
        self._headers = {KEY_HEADER: api_key} if api_key else None

    def _input(self, name: str, array: np.ndarray, datatype: str):
        if self._batched:
            array = array.reshape(1, -1)   # one request = a batch of one user
        inp = self._tc.InferInput(name, list(array.shape), datatype)
        if self.protocol == "http":
            inp.set_data_from_numpy(array, binary_data=True)
        else:
            inp.set_data_from_numpy(array)
        return inp

    def recommend(
        self, tenant: str, user_id: str, k: int = 10, exclude_item_ids: Iterable[str] = (),
        recent_item_ids: Iterable[str] | None = None, event_types: Iterable[str] | None = None,
    ) -> RecommendationResult:
        """Top-k for `user_id`. `recent_item_ids`: the user's events since the last export, oldest first (for an
        id the store does not know, e.g. an anonymous session id, they are the whole history). `event_types`: one
        event-type name per recent item (e.g. "view", "purchase"; the tenant's ETL event types), read by a
        behaviour-aware export; None: unknown types."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        try:
            return self._recommend(tenant, user_id, k, exclude_item_ids, recent_item_ids, event_types)
        except RecommendError as e:
            # The served outputs changed since they were read (an A/B experiment started or stopped: ARM comes and
            # goes): read them again and ask once more.
            if not (e.invalid_argument and "output" in e.message and self._outputs is not None):
                raise
            before, self._outputs = self._outputs, None
            if self._served_outputs() == before:
                raise
            return self._recommend(tenant, user_id, k, exclude_item_ids, recent_item_ids, event_types)

    def _recommend(self, tenant, user_id, k, exclude_item_ids, recent_item_ids, event_types=None
                   ) -> RecommendationResult:
        exclude = [str(i).encode("utf-8") for i in exclude_item_ids] or [b""]
        names = self._served_outputs()     # first: it also says whether the model is batched
        inputs = [
            self._input("TENANT", np.array([tenant.encode("utf-8")], dtype=np.object_), "BYTES"),
            self._input("USER_ID", np.array([str(user_id).encode("utf-8")], dtype=np.object_), "BYTES"),
            self._input("K", np.array([int(k)], dtype=np.int32), "INT32"),
            self._input("EXCLUDE_ITEM_IDS", np.array(exclude, dtype=np.object_), "BYTES"),
        ]
        if recent_item_ids is not None:
            recent = [str(i).encode("utf-8") for i in recent_item_ids] or [b""]
            inputs.append(self._input("RECENT_ITEM_IDS", np.array(recent, dtype=np.object_), "BYTES"))
        if event_types is not None:
            types = [str(t).encode("utf-8") for t in event_types] or [b""]
            inputs.append(self._input("EVENT_TYPES", np.array(types, dtype=np.object_), "BYTES"))
        if self.protocol == "http":
            outputs = [self._tc.InferRequestedOutput(n, binary_data=True) for n in names]
            kwargs = {}
        else:
            outputs = [self._tc.InferRequestedOutput(n) for n in names]
            kwargs = {"client_timeout": self.timeout}
        try:
            res = self._client.infer(self.model_name, inputs, outputs=outputs, headers=self._headers, **kwargs)
        except InferenceServerException as e:
            raise RecommendError.from_triton(e, self.protocol) from e
        except OSError as e:  # the HTTP client raises connection errors / timeouts as they are
            raise RecommendError(f"{type(e).__name__}: {e}", status=None, protocol=self.protocol) from e
        strategy = res.as_numpy("STRATEGY").reshape(-1)
        ignored = res.as_numpy("IGNORED_ITEMS") if "IGNORED_ITEMS" in names else None
        arm = res.as_numpy("ARM").reshape(-1) if "ARM" in names else None
        reasons = res.as_numpy("REASONS").reshape(-1) if "REASONS" in names else []
        return RecommendationResult(
            item_ids=[_to_str(x) for x in res.as_numpy("ITEM_IDS").reshape(-1)],
            scores=[float(x) for x in res.as_numpy("SCORES").reshape(-1)],
            titles=[_to_str(x) for x in res.as_numpy("TITLES").reshape(-1)],
            strategy=_to_str(strategy[0]) if strategy.size else "",
            ignored_items=int(ignored.reshape(-1)[0]) if ignored is not None and ignored.size else 0,
            arm=_to_str(arm[0]) if arm is not None and arm.size else "",
            reasons=[_to_str(x) for x in reasons],
        )

    def _served_outputs(self) -> tuple[str, ...]:
        """OUTPUTS that the served model declares (read once, with whether it is batched): a repository exported by
        an older tapestry has no IGNORED_ITEMS, and asking Triton for an undeclared output fails the whole request;
        a batched model's TENANT is [-1, 1] (batch dimension first), an unbatched one's [1]."""
        if self._outputs is None:
            try:
                md = self._client.get_model_metadata(self.model_name)
            except InferenceServerException as e:
                raise RecommendError.from_triton(e, self.protocol) from e
            except OSError as e:
                raise RecommendError(f"{type(e).__name__}: {e}", status=None, protocol=self.protocol) from e
            if isinstance(md, dict):
                declared = {o["name"] for o in md["outputs"]}
                shapes = {i["name"]: list(i["shape"]) for i in md["inputs"]}
            else:
                declared = {o.name for o in md.outputs}
                shapes = {i.name: list(i.shape) for i in md.inputs}
            self._batched = len(shapes.get("TENANT", [1])) == 2
            self._outputs = tuple(n for n in OUTPUTS if n in declared)
        return self._outputs

    def wait_until_ready(self, timeout: float = 30.0, interval: float = 0.1) -> None:
        """Block until the server and the model are ready; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                if self._client.is_server_ready() and self._client.is_model_ready(self.model_name):
                    return
            except Exception as e:  # noqa: BLE001 - connection refused etc. while the server comes up
                last = e
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"model {self.model_name!r} at {self.url} ({self.protocol}) not ready after {timeout}s"
                    + (f": {last}" if last else "")
                )
            time.sleep(interval)

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> "RecommendClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
