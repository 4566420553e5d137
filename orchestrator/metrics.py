"""The orchestrator's own Prometheus metrics (`tandem_` prefix, fixed label sets)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0)


class GatewayMetrics:
    """All metrics of one gateway, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tandem_requests", "Requests answered, by route and HTTP status.",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "tandem_request_duration_seconds", "Time from request to the end of the response.",
            ["route"], buckets=_REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.scheduling_duration = Histogram(
            "tandem_scheduling_duration_seconds", "Time to pick endpoints for one request.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.picks = Counter(
            "tandem_picks", "Endpoints chosen, by profile.", ["profile", "endpoint"], registry=r
        )
        self.pd_decisions = Counter(
            "tandem_pd_decisions", "Prefill/decode decisions, and why.",
            ["decision", "reason"], registry=r,
        )  # fmt: skip
        self.client_fields_dropped = Counter(
            "tandem_client_fields_dropped",
            "Body fields only tandem may set (kv_transfer_params) removed from client requests.",
            ["field"], registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "tandem_rejected_requests", "Requests no endpoint could take, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.admissions = Counter(
            "tandem_admission_requests",
            "Admission decisions, by priority and outcome (admitted, or the reason refused).",
            ["priority", "outcome"], registry=r,
        )  # fmt: skip
        self.admission_wait = Histogram(
            "tandem_admission_wait_seconds",
            "Time admitted requests waited for a saturated pool (only those that waited).",
            buckets=_REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.admission_queue = Gauge(
            "tandem_admission_queue_length", "Requests waiting for a saturated pool, by pool.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "tandem_upstream_errors", "Failures talking to a pod, by kind.",
            ["kind"], registry=r,
        )  # fmt: skip
        self.scrape_errors = Counter(
            "tandem_scrape_errors", "Failed metric scrapes, by endpoint.", ["endpoint"],
            registry=r,
        )  # fmt: skip
        self.metrics_age = Gauge(
            "tandem_endpoint_metrics_age_seconds", "Age of the last good scrape, by endpoint.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.endpoint_healthy = Gauge(
            "tandem_endpoint_healthy", "1 while the endpoint is schedulable.", ["endpoint"],
            registry=r,
        )  # fmt: skip
        self.breaker_state = Gauge(
            "tandem_circuit_breaker_state",
            "Each endpoint's circuit breaker: 0 closed, 1 open, 2 half-open (one probe allowed).",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.breaker_opened = Counter(
            "tandem_circuit_breaker_opened",
            "Times an endpoint's circuit breaker opened (failures in a row, or a failed probe).",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "tandem_in_flight_requests", "Requests in flight from this gateway, by endpoint.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.kv_event_batches = Counter(
            "tandem_kv_event_batches", "KV event batches applied to the precise index.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.kv_event_lag = Histogram(
            "tandem_kv_event_lag_seconds",
            "From a pod publishing a KV event batch (its timestamp) to the orchestrator "
            "receiving it.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.kv_event_gaps = Counter(
            "tandem_kv_event_gaps", "KV event batches missed (a skipped sequence number).",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.kv_event_replays = Counter(
            "tandem_kv_event_replays",
            "Replays of a pod's buffered KV events, by result (synced, history_lost, failed).",
            ["endpoint", "result"], registry=r,
        )  # fmt: skip
        self.kv_events_resubscribes = Counter(
            "tandem_kv_event_resubscribes",
            "KV event streams dropped and subscribed again (unmendable gap, error).",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.precise_index_blocks = Gauge(
            "tandem_precise_index_blocks", "Block hashes the precise prefix index holds.",
            registry=r,
        )  # fmt: skip
        self.precise_index_synced = Gauge(
            "tandem_precise_index_synced",
            "1 while the endpoint's KV events are whole and the precise index is used for it.",
            ["endpoint"], registry=r,
        )  # fmt: skip
        self.ext_proc_streams = Counter(
            "tandem_ext_proc_streams",
            "Envoy ext_proc streams (one per request through Envoy), by outcome.",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.pool_replicas = Gauge(
            "tandem_pool_replicas", "Endpoints discovered in each pool.", ["pool"], registry=r
        )
        self.desired_replicas = Gauge(
            "tandem_pool_desired_replicas",
            "Pods each pool needs for the load it sees within the SLO (scaling signal).",
            ["pool"], registry=r,
        )  # fmt: skip
        self.replicas_needed = Gauge(
            "tandem_pool_replicas_needed",
            "Pods each signal needs, as fractions of a pod "
            "(prefill_rate, prefill_backlog, kv, itl).",
            ["pool", "signal"], registry=r,
        )  # fmt: skip
        self.pool_prefill_rate = Gauge(
            "tandem_pool_prefill_tokens_per_second",
            "Uncached prompt tokens routed to each pool per second, over the scaling window.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.pod_prefill_rate = Gauge(
            "tandem_pool_pod_prefill_capacity_tokens_per_second",
            "Prompt tokens one pod of the pool prefills per second at the observed prompt "
            "length (the step-time model).",
            ["pool"], registry=r,
        )  # fmt: skip
        self.token_ratio = Gauge(
            "tandem_pool_prompt_token_ratio",
            "Prompt tokens each pool's pods computed per token the orchestrator predicted "
            "(the scaling signals' calibration).",
            ["pool"], registry=r,
        )  # fmt: skip
        self.pool_target = Gauge(
            "tandem_pool_target_replicas",
            "The split the rebalancer's last move leads to: each pool's pods once it has "
            "landed (what `tandem up`, or an operator, acts on).",
            ["pool"], registry=r,
        )  # fmt: skip
        self.pool_moves = Counter(
            "tandem_pool_moves",
            "Pods the rebalancer moved from one pool to the other, by source, target and "
            "reason.",
            ["source", "target", "reason"], registry=r,
        )  # fmt: skip
        self.config_reloads = Counter(
            "tandem_config_reloads", "Configuration changes seen, by result (applied, rejected).",
            ["result"], registry=r,
        )  # fmt: skip

    def forget_endpoint(self, name: str) -> None:
        series = (
            self.metrics_age, self.endpoint_healthy, self.in_flight, self.breaker_state,
            self.breaker_opened, self.scrape_errors, self.precise_index_synced,
            self.kv_event_batches, self.kv_event_gaps, self.kv_events_resubscribes,
        )  # fmt: skip
        for family in series:
            with contextlib.suppress(KeyError):
                family.remove(name)
