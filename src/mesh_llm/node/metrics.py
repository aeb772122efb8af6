"""The node's Prometheus metrics: one collector that reads, when scraped, the numbers the
node already keeps (the API's counts and timings, each slot's hosting and RPC tunnels, the
peer table), and the process's RSS and CPU. Nothing is counted twice or per token here.

A registry per node, not prometheus_client's global one: a test runs several nodes in one
process, and a node's page must show that node only. Names follow Prometheus's
conventions: `mesh_llm_` prefix, base units (seconds, bytes), `_total` for counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..api.guard import AllowedHosts
from ..api.metrics import ApiMetrics, Histogram, Scrape
from ..api.proxy import ApiProxy
from ..changes import ChangeFeed
from ..console.charts import Reading, Sampler
from ..console.server import Console
from ..inference.hosting import tunnel_stats
from .config import NodeConfig
from .view import LocalNode

NS = "mesh_llm"
TTFT_WINDOW_S = 60.0  # the charts' TTFT percentiles: first tokens of the last minute


class ApiCounts(Protocol):
    """What the collector reads of the API (api.proxy.ApiProxy)."""

    in_flight: int
    queued: int
    metrics: ApiMetrics | None
    scrape: Scrape | None


class ConsoleNode(LocalNode, Protocol):
    """What the console reads of the node besides (node.py's Node)."""

    @property
    def changes(self) -> ChangeFeed: ...

    def status(self) -> dict[str, Any]: ...


def link_kind(link: str) -> str:
    """A peer's `link` as a bounded label: "direct", "punched" or "relayed"."""
    return link.split(" ", 1)[0] or "unknown"


def _histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    family.add_metric(labels, [(floatToGoString(b), n) for b, n in hist.cumulative()],
                      hist.sum)


class NodeCollector(Collector):
    """Builds every mesh_llm_ family afresh from the node's state at each scrape."""

    def __init__(self, node: LocalNode, api: ApiCounts, metrics: ApiMetrics) -> None:
        self._node = node
        self._api = api
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._node_info()
        yield from self._requests()
        yield from self._models()
        yield from self._hosting()
        yield from self._peers()

    def _node_info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(f"{NS}_node_info", "This node: always 1, its facts as labels",
                                 labels=["node_id", "version", "client"])
        node = self._node
        info.add_metric([node.node_id, __version__, str(node.config.client).lower()], 1)
        yield info

    def _requests(self) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            f"{NS}_api_requests", "Requests this node's API (and console chat) answered, by "
            "route, status code and model", labels=["route", "code", "model"])
        for (route, code, model), n in self._metrics.answers.items():
            answers.add_metric([route, code, model], n)
        yield answers
        yield GaugeMetricFamily(f"{NS}_api_requests_in_flight",
                                "Requests being relayed now", value=self._api.in_flight)
        yield GaugeMetricFamily(f"{NS}_api_requests_queued",
                                "Requests waiting for a ready llama-server now",
                                value=self._api.queued)

    def _models(self) -> Iterator[Metric]:
        m = ["model"]
        ttft = HistogramMetricFamily(
            f"{NS}_time_to_first_token_seconds", "From a streamed request's arrival to its "
            "first chunk of answer, queueing included", labels=m)
        gaps = HistogramMetricFamily(
            f"{NS}_inter_token_latency_seconds", "Gaps between a stream's chunks (one token "
            "each, as llama-server sends them)", labels=m)
        relayed = CounterMetricFamily(f"{NS}_relayed_requests",
                                      "Requests relayed to a model's llama-server", labels=m)
        generated = CounterMetricFamily(f"{NS}_generated_tokens", "Tokens generated, as "
                                        "llama-server reports them per answer", labels=m)
        prompt = CounterMetricFamily(f"{NS}_prompt_tokens",
                                     "Prompt tokens, as llama-server reports them", labels=m)
        proposed = CounterMetricFamily(f"{NS}_draft_tokens_proposed",
                                       "Draft tokens proposed (speculative decoding)", labels=m)
        accepted = CounterMetricFamily(f"{NS}_draft_tokens_accepted",
                                       "Draft tokens accepted (speculative decoding)", labels=m)
        for name, stats in self._metrics.models.items():
            _histogram(ttft, [name], stats.ttft)
            _histogram(gaps, [name], stats.gaps)
            relayed.add_metric([name], stats.requests)
            generated.add_metric([name], stats.generated)
            prompt.add_metric([name], stats.prompt)
            proposed.add_metric([name], stats.draft_proposed)
            accepted.add_metric([name], stats.draft_accepted)
        yield from (ttft, gaps, relayed, generated, prompt, proposed, accepted)

    def _hosting(self) -> Iterator[Metric]:
        """Per model this node hosts: plans, restarts, stalls, and its RPC tunnels (since
        its serving llama-server started: a re-plan starts them afresh, which Prometheus's
        rate() reads as a counter reset)."""
        m = ["model"]
        families = {
            "plan_changes": CounterMetricFamily(f"{NS}_plan_changes", "Plans replaced by "
                                                "another (re-plans)", labels=m),
            "stall": CounterMetricFamily(f"{NS}_replan_stall_seconds", "Seconds without a "
                                         "llama-server taking requests, after one had",
                                         labels=m),
            "restarts": CounterMetricFamily(f"{NS}_llama_server_restarts", "llama-server "
                                            "restarts after it exited", labels=m),
            "ready": GaugeMetricFamily(f"{NS}_llama_server_ready", "1 while this node's "
                                       "llama-server for the model takes requests", labels=m),
            "in": CounterMetricFamily(f"{NS}_rpc_tunnel_written_bytes", "Bytes llama-server "
                                      "wrote to its RPC tunnels", labels=m),
            "out": CounterMetricFamily(f"{NS}_rpc_tunnel_sent_bytes", "Bytes the RPC "
                                       "tunnels sent over the mesh", labels=m),
            "commands": CounterMetricFamily(f"{NS}_rpc_commands", "RPC commands sent to "
                                            "workers", labels=m),
            "round_trips": CounterMetricFamily(f"{NS}_rpc_round_trips", "RPC commands whose "
                                               "reply llama-server waited for", labels=m),
            "sent": CounterMetricFamily(f"{NS}_weight_bytes_sent", "Weight bytes sent to "
                                        "workers as bytes", labels=m),
            "dedup": CounterMetricFamily(f"{NS}_weight_bytes_deduplicated", "Weight bytes "
                                         "sent as references to the worker's own file",
                                         labels=m),
        }
        for slot in self._node.slots:
            hosting = slot.hosting
            if not hosting.active and not hosting.plan_changes and not hosting.restarts:
                continue
            gen = hosting.current
            rpc = tunnel_stats(gen.stats if gen is not None else [])
            values = {"plan_changes": hosting.plan_changes, "stall": hosting.stall_seconds(),
                      "restarts": hosting.restarts, "ready": int(slot.answers()),
                      "in": rpc["bytes_in"], "out": rpc["bytes_out"],
                      "commands": rpc["commands"], "round_trips": rpc["round_trips"],
                      "sent": rpc["weight_bytes_sent"],
                      "dedup": rpc["weight_bytes_referenced"]}
            for key, family in families.items():
                family.add_metric([slot.name], values[key])
        yield from families.values()

    def _peers(self) -> Iterator[Metric]:
        peers = self._node.connected_peers()
        by_kind: dict[tuple[str, str], int] = {}
        rtt = GaugeMetricFamily(f"{NS}_peer_rtt_seconds", "Round trip to each connected peer",
                                labels=["peer", "role", "link"])
        for p in peers:
            kind = (p.role, link_kind(p.link))
            by_kind[kind] = by_kind.get(kind, 0) + 1
            if p.rtt_ms is not None:
                rtt.add_metric([p.node_id, p.role, kind[1]], p.rtt_ms / 1000)
        count = GaugeMetricFamily(f"{NS}_peers", "Connected peers by role and link kind",
                                  labels=["role", "link"])
        for (role, link), n in sorted(by_kind.items()):
            count.add_metric([role, link], n)
        yield count
        yield rtt


def node_scrape(node: LocalNode, api: ApiCounts, metrics: ApiMetrics) -> Scrape:
    """The node's /metrics page: its own registry, this collector and the process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, api, metrics))
    ProcessCollector(namespace=NS, registry=registry)  # RSS, CPU seconds, open fds (Linux)
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)


def chart_reading(node: LocalNode, metrics: ApiMetrics) -> Reading:
    """What the console's charts sample each second."""
    return Reading(
        tokens={name: s.live_tokens for name, s in metrics.models.items()},
        requests={name: s.requests for name, s in metrics.models.items()},
        ttft_s=metrics.ttft_since(TTFT_WINDOW_S),
        rtt_ms={p.node_id[:12]: p.rtt_ms for p in node.connected_peers()},
    )


def console_for(node: ConsoleNode, api: ApiProxy, allowed: AllowedHosts) -> Console:
    """The node's console, and what the API measures for it: unless --no-metrics, the API
    records per request, and the console serves /metrics (the API too with
    --metrics-on-api) and the charts. The console shows the invite token: it needs the
    API's key whenever there is one."""
    config: NodeConfig = node.config
    scrape, sampler = None, None
    if config.metrics:
        metrics = api.metrics = ApiMetrics()
        scrape = node_scrape(node, api, metrics)
        sampler = Sampler(lambda: chart_reading(node, metrics))
        if config.metrics_on_api:
            api.scrape = scrape
    return Console(node.status, node.changes, api, api_key=config.api_key, allowed=allowed,
                   scrape=scrape, sampler=sampler)
