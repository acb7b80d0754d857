"""What `flwr run` pays to build this App's FAB: from the checkout, and from the staged copy that
`consortium simulate` and `consortium run` hand it (server.flwr_run.staged_app).

    python -m benchmarks.fab_build --out results/fab_build.json

Both sides in one process, alternating, ``--repeats`` times each; the staged side counts the copy
and the build. The two FABs must be byte for byte the same, or the benchmark fails.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from benchmarks import harness
from server.flwr_run import APP_DIR, staged_app


def _files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def main() -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/fab_build.json")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"checkout": [], "staged": []}
    fabs = {}
    for _ in range(args.repeats):
        started = time.perf_counter()
        fabs["checkout"] = build_fab_from_disk(APP_DIR)
        seconds["checkout"].append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            fabs["staged"] = build_fab_from_disk(staged_app(Path(tmp) / "app"))
            seconds["staged"].append(time.perf_counter() - started)
    if fabs["checkout"] != fabs["staged"]:
        raise SystemExit("the staged copy built another FAB: server.flwr_run.staged_app is wrong")
    median = {side: statistics.median(values) for side, values in seconds.items()}
    body = {**harness.header("benchmarks.fab_build", packages=("flwr",)),
            "files_under_app": _files(APP_DIR), "fab_bytes": len(fabs["staged"]),
            "fab_sha256": hashlib.sha256(fabs["staged"]).hexdigest(), "seconds": seconds,
            "median_seconds": median, "checkout_over_staged": median["checkout"] / median["staged"]}
    harness.write_json(args.out, body)
    print(f"{body['files_under_app']} files under the App; FAB {body['fab_bytes']} bytes, the "
          f"same from both; median build {median['checkout']:.2f} s from the checkout, "
          f"{median['staged']:.2f} s staged ({body['checkout_over_staged']:.0f} x); "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
