"""The default console filter, on lines as `flwr run --stream` prints them (from a demo run)."""

from common.infra.console import ConsoleFilter, clean

STREAM = [
    "\x1b[92mINFO \x1b[0m:      Starting Flower Simulation\n",
    "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed.\n",
    "12:04:52 INFO server.coordinator: run -> /tmp/demo: 3 rounds\n",
    "/x/ray/_private/worker.py:2051: FutureWarning: Tip: In future versions of Ray, ...\n",
    "  warnings.warn(\n",
    "\x1b[36m(ClientAppActor pid=8122)\x1b[0m 12:05:11 INFO client.partner: partner-1 trains\n",
    "\x1b[36m(ClientAppActor pid=8118)\x1b[0m 12:05:19 INFO client.partner: partner-0 round 1: "
    "loss 0.7867, ε 5.301\x1b[32m [repeated 2x across cluster]\x1b[0m\n",
    "(ClientAppActor pid=8118) 12:05:20 INFO client.round_plan: partner-2 DP plan: n=473\n",
    "(ClientAppActor pid=8118) 12:05:20 WARNING client.partner: partner-2 is slow\n",
    "12:05:28 INFO server.coordinator: round 1/3 | partners 3 | accuracy mean 0.9370\n",
    "11/30/2026 12:05:39:DEBUG:ServerApp finished running.\n",
    "\x1b[91mERROR \x1b[0m:     Exit Code: 305\n",
    "Traceback (most recent call last):\n",
    '  File "x.py", line 1, in <module>\n',
    "    boom()\n",
    "ValueError: boom\n",
    "\x1b[92mINFO \x1b[0m:      Starting logstream for run_id `1`\n",
]


def test_default_console_keeps_rounds_progress_and_errors_only() -> None:
    keep = ConsoleFilter()
    shown = [line for line in map(keep, STREAM) if line is not None]
    assert shown == [
        "12:04:52 INFO server.coordinator: run -> /tmp/demo: 3 rounds",
        "12:05:19 INFO client.partner: partner-0 round 1: loss 0.7867, ε 5.301",
        "12:05:20 WARNING client.partner: partner-2 is slow",
        "12:05:28 INFO server.coordinator: round 1/3 | partners 3 | accuracy mean 0.9370",
        "ERROR :     Exit Code: 305",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "    boom()",
        "ValueError: boom",
    ]


def test_clean_strips_colour_ray_prefix_and_repeat_note() -> None:
    assert clean(STREAM[6]) == ("12:05:19 INFO client.partner: partner-0 round 1: loss 0.7867, "
                                "ε 5.301")
