"""Prometheus metrics of the gateway (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("flywheel_http_requests_total", "HTTP requests by route and status.", ["route", "status"])
CHAT_LATENCY = Histogram(
    "flywheel_chat_latency_seconds", "Chat completion latency, gateway side.", ["stream"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80),
)
ANSWERS = Counter("flywheel_answers_total", "Answers served, by model version.", ["model_version"])
FEEDBACK = Counter("flywheel_feedback_events_total", "Feedback events accepted (202) by type.", ["type"])
RECORD_FAILURES = Counter("flywheel_record_failures_total", "Events refused because the outbox was full.", ["kind"])
SWAPS = Counter("flywheel_model_swaps_total", "Champion switches performed without restart.")
SWAP_FAILURES = Counter("flywheel_model_swap_failures_total", "Champion switches that failed and were retried.")
ADAPTERS_LOADED = Gauge("flywheel_engine_adapters_loaded",
                        "LoRA adapters this gateway loaded into the engine and has not unloaded: the champion's, the "
                        "canary's, the challenger's (loaded ahead), and old ones still answering or in their grace "
                        "period.")
ADAPTER_UNLOADS = Counter("flywheel_adapter_unloads_total",
                          "Old adapters unloaded from the engine after their last request and the grace period.")
ADAPTER_UNLOAD_FAILURES = Counter("flywheel_adapter_unload_failures_total",
                                  "Adapter unloads the engine failed; each is tried again.")
ADAPTER_PRELOAD_FAILURES = Counter("flywheel_adapter_preload_failures_total",
                                   "Challenger adapters that failed to load ahead of a move (recorded on the version "
                                   "as load_error; the live routes are unaffected).")
LIVE_VERSION = Gauge("flywheel_live_model_version", "The registry version currently answering.")
CANARY_VERSION = Gauge("flywheel_canary_model_version", "The canary version this gateway sends its share to (0: none).")
CANARY_PERCENT = Gauge("flywheel_canary_percent", "The percent of end users sent to the canary (0: no canary).")
CHAT_ERRORS = Counter("flywheel_chat_errors_total", "Chat requests the engine failed, by model version.",
                      ["model_version"])
VERSION_LATENCY = Histogram(
    "flywheel_version_latency_seconds", "Chat completion latency, gateway side, by model version.",
    ["model_version"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80),
)
THUMBS_UP_RATE = Gauge("flywheel_version_thumbs_up_rate",
                       "Share of up among accepted thumbs on a version's answers, with its 95 % Wilson interval.",
                       ["model_version", "bound"])
THUMBS_VOTES = Gauge("flywheel_version_thumbs_votes", "Accepted thumbs on a version's answers.", ["model_version"])
ANSWER_CHARS = Gauge("flywheel_version_answer_chars", "Mean length of a version's recorded answers, in characters.",
                     ["model_version"])
CANARY_WIN_RATE = Gauge("flywheel_canary_win_rate",
                        "The canary's wins over decisive accepted picks against the champion since it started, "
                        "with its 95 % Wilson interval (absent without a canary or a pick).", ["bound"])
CANARY_PICKS = Gauge("flywheel_canary_pairwise_votes",
                     "Accepted picks between canary and champion since the canary started, by outcome for the canary.",
                     ["outcome"])
CANARY_DECISIONS = Counter("flywheel_canary_decisions_total",
                           "Automatic canary decisions applied (rollback, promote, stop).", ["action"])
ENGINES_LAUNCHED = Gauge("flywheel_engines_launched",
                         "Engines this gateway launched for full-model versions and has not stopped (the deployment's "
                         "own engine is not counted).")
ENGINE_LAUNCHES = Counter("flywheel_engine_launches_total",
                          "Engines launched for full-model versions that passed their health check.")
ENGINE_LAUNCH_FAILURES = Counter("flywheel_engine_launch_failures_total",
                                 "Engines for full-model versions that failed to start or to pass their health check "
                                 "in time; the live version kept serving.")
ENGINE_STOPS = Counter("flywheel_engine_stops_total",
                       "Launched engines stopped after their last request and the grace period.")
ENGINE_EXITS = Counter("flywheel_engine_exits_total",
                       "Launched engines that exited on their own; one still routed to is launched again.")
