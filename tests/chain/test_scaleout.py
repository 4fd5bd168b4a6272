"""Scale-out as users would run it: two gateway collectors (the shipped otelcol-gateway.yaml, twice) behind the
agent collector's `loadbalancing` exporter (otelcol-agent.yaml + otelcol-agent-scaleout.yaml, routing by trace
id), fed by `retrybudget demo` (its scripted fault mix through its in-process proxy), into one Jaeger.

Every trace the tail-sampling policies must keep (a retry, a denial or a failure in the demo's evidence file)
arrives in Jaeger WHOLE: as many attempt spans as the evidence file has lines for it, plus its logical span. Both
gateways received spans (the load really was split), and the gateways' tail samplers together saw each trace id
once (otelcol_processor_tail_sampling_new_trace_id_received summed = traces in the evidence: none was split).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from chainlib import Proc, binary, metric_value, read_evidence, wait_until
from stack import AGENT_CONFIG, AGENT_SCALEOUT_CONFIG, GATEWAY_CONFIG, SERVICE, Collector, Jaeger, tags
from test_chain import TRACE_TIMEOUT, interesting

DEMO_SECONDS = 8


def test_two_gateways_behind_loadbalancing_keep_traces_whole():
    bin_ = binary("RETRYBUDGET_BIN")
    with tempfile.TemporaryDirectory(prefix="retrybudget-scaleout-") as tmp:
        work = Path(tmp)
        procs = []
        try:
            jaeger = Jaeger(work)
            procs.append(jaeger.proc)
            gateways = []
            for name in ("gateway-1", "gateway-2"):
                gw = Collector(name, [GATEWAY_CONFIG], work, {
                    "OTELCOL_JAEGER_ENDPOINT": f"127.0.0.1:{jaeger.otlp_grpc}",
                    "OTELCOL_PROMETHEUS_ENDPOINT": "127.0.0.1:0",
                })
                gateways.append(gw)
                procs.append(gw.proc)
            agent = Collector("agent", [AGENT_CONFIG, AGENT_SCALEOUT_CONFIG], work, {
                # otlp/gateway stays defined in the base file but is no longer in any pipeline.
                "OTELCOL_GATEWAY_ENDPOINT": f"127.0.0.1:{gateways[0].otlp_grpc}",
                "OTELCOL_GATEWAY_1_ENDPOINT": f"127.0.0.1:{gateways[0].otlp_grpc}",
                "OTELCOL_GATEWAY_2_ENDPOINT": f"127.0.0.1:{gateways[1].otlp_grpc}",
            })
            procs.append(agent.proc)
            for ready in [jaeger, *gateways, agent]:
                ready.wait_ready()

            evidence = work / "demo-evidence.jsonl"
            demo = Proc("demo", [bin_, "demo", "--duration", f"{DEMO_SECONDS}s", "--listen", "127.0.0.1:0",
                                 "--evidence-file", str(evidence), "--rate", "20"], work, {
                "OTEL_SERVICE_NAME": SERVICE,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{agent.otlp_grpc}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                "OTEL_BSP_SCHEDULE_DELAY": "500",
            })
            procs.append(demo)
            demo.p.wait(timeout=DEMO_SECONDS + 120)
            assert demo.p.returncode in (0, 1), demo.log_tail()  # 1: the demo's mix includes terminal failures

            lines = read_evidence(evidence)
            keep = interesting(lines)
            attempts_of: dict[str, int] = {}
            for line in lines:
                attempts_of[line["trace_id"]] = attempts_of.get(line["trace_id"], 0) + 1
            assert len(keep) >= 10, f"the demo's mix should retry and fail: {len(keep)} incident traces"

            def whole():
                """The incident traces once Jaeger holds every one of them whole (it may still be storing the
                last spans of a trace it already lists); a trace split across the gateways stays broken, and
                the timeout's message names it."""
                got = {t["traceID"]: t for t in jaeger.traces()}
                if not keep <= set(got):
                    return None
                broken = []
                for trace_id in keep:
                    spans = got[trace_id]["spans"]
                    attempt_spans = [s for s in spans if tags(s).get("span.kind") == "client"
                                     and "retrybudget.attempt" in tags(s)]
                    logical = [s for s in spans if s["operationName"].startswith("chat ")]
                    if len(attempt_spans) != attempts_of[trace_id] or len(logical) != 1:
                        broken.append((trace_id, attempts_of[trace_id], [s["operationName"] for s in spans]))
                assert not broken, f"traces split or incomplete: {broken[:5]}"
                return got

            wait_until(f"all {len(keep)} incident traces of the demo whole in Jaeger", whole, TRACE_TIMEOUT,
                       procs[:-1], interval=2)

            internal = [gw.internal_metrics() for gw in gateways]
            accepted = [metric_value(m, "otelcol_receiver_accepted_spans") for m in internal]
            # Each gateway's tail sampler counts the trace ids it saw first-hand: routed by trace id, every trace
            # of the run is new on exactly one gateway, so the sum is the number of traces (a split trace would
            # count twice).
            new_traces = [metric_value(m, "otelcol_processor_tail_sampling_new_trace_id_received") for m in internal]
            print(f"\nscale-out: {len(keep)} incident traces whole in Jaeger; spans accepted per gateway: "
                  f"{accepted}; new trace ids per gateway: {new_traces}; traces in the evidence: {len(attempts_of)}")
            assert all(a > 0 for a in accepted), accepted
            assert sum(new_traces) == len(attempts_of), (new_traces, len(attempts_of))
        finally:
            for p in reversed(procs):
                p.stop()
