"""`consortium choose-recipe`: which DP recipe learns best with *this* base model, measured on
PUBLIC data, so that `finetune = auto` follows the encoder (issue 32: a warm-started encoder may
favour its frozen features, another one adapting the encoder under DP).

Each candidate recipe (the head on the frozen features, FFA-LoRA in every layer, FFA-LoRA in the
top layer) trains the same simulated federation: the public file split over ``partners``, the
run's ε, rounds and the rest of its config, each partner scored on its own held-out split of
the public file. The best mean score wins; with ``--write`` it goes into the base model's
directory (common.tasks.recipes.RECIPE_FILE), where `finetune = auto` reads it. No partner's row is
read, so no ε is spent: the simulated partners' ledgers live in a scratch folder that is
removed. Pick ``partners`` so that a simulated partner holds about as many rows as a real one
will: the planner's noise, and so the winner, depends on n."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from common.config import RunConfig, epsilon_keys
from common.errors import ConfigError, ConsortiumError
from common.tasks import get_task
from common.tasks.recipes import RECIPE_FILE, read_recipes
from common.infra.storage import atomic_write_json
from common.model.warm_start import file_sha256
from server import coordinator
from server.run_data import read_metrics
from simulations.local_grid import LocalGrid

logger = logging.getLogger(__name__)

def candidates_for(task: str, names: list[str] | None) -> dict[str, dict[str, Any]]:
    known = get_task(task).recipe_candidates
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ConfigError(f"choose-recipe: --candidates {unknown} unknown for {task}; pick from "
                          f"{sorted(known)}")
    return {n: known[n] for n in (names or known)}


def measure(config: RunConfig, keys: dict[str, Any], partners: int, work: Path) -> dict:
    """One candidate's simulated federation on the public file; its final mean score."""
    whole = {"lora-freeze-a": False, "lora-layers": 0, **keys}  # nothing of another recipe
    run = RunConfig.from_mapping({**config.to_mapping(), **whole, "out-dir": str(work / "out"),
                                  "ledger-dir": str(work / "ledgers")})
    started = time.perf_counter()
    try:
        out = coordinator.run_federation(LocalGrid(run, partners), run)
    except ConfigError as exc:  # the same for every candidate (e.g. the warm start's own rows)
        raise ConfigError(f"choose-recipe: {exc}") from None
    except ConsortiumError as exc:  # e.g. the planner: this recipe cannot learn at this n
        return {"keys": keys, "refused": str(exc),
                "seconds": round(time.perf_counter() - started, 1)}
    last = read_metrics(out / "metrics.jsonl")[-1]
    metric = str(last.get("eval_metric") or "accuracy")
    score = (last.get("eval_mean") or {}).get(metric)
    if score is None:
        raise ConfigError(f"choose-recipe: {keys} gave no evaluation (failures: "
                          f"{last.get('eval_failures')}); see the log above")
    return {"keys": keys, "metric": metric, "score": float(score),
            "seconds": round(time.perf_counter() - started, 1)}


def choose_recipe(config: RunConfig, partners: int, names: list[str] | None = None) -> dict:
    """Every candidate measured on ``config.data`` (public); the recipe record, best first."""
    public = Path(config.data)
    if not public.is_file():
        raise ConfigError(f"choose-recipe: --public-data {public} is not a file")
    measured = {}
    with tempfile.TemporaryDirectory(prefix="consortium-recipe-") as scratch:
        for name, keys in candidates_for(config.task, names).items():
            logger.info("choose-recipe: measuring %s (%s)", name, keys)
            measured[name] = measure(config, keys, partners, Path(scratch) / name)
            logger.info("choose-recipe: %s: %s", name, measured[name].get(
                "refused") or f"{measured[name]['metric']} {measured[name]['score']:.4f}")
    scored = [n for n in measured if "score" in measured[n]]
    if not scored:
        raise ConfigError("choose-recipe: every candidate was refused: " + "; ".join(
            f"{n}: {m['refused']}" for n, m in measured.items()))
    best = max(scored, key=lambda n: measured[n]["score"])  # a tie: the first, the cheaper
    return {"task": config.task, "choice": best, "keys": measured[best]["keys"],
            "measured": measured, "base_model": config.base_model,
            "public_data": {"path": str(public.resolve()), "sha256": file_sha256(public)},
            "partners": partners, "epsilon": config.epsilon if config.dp else None,
            "rounds": config.num_rounds, "local_epochs": config.local_epochs,
            "epsilon_spent": "none: public data only, no partner's row"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("choose-recipe", help="measure which DP recipe learns best with a base "
                       "model on PUBLIC data; --write makes it what finetune = auto uses")
    p.add_argument("--public-data", required=True, type=Path, help="a public labelled file "
                   "(CSV / TSV / JSONL, or CoNLL for token-classification); never a partner's rows")
    p.add_argument("--base-model", default="", help="the model the runs will use (default: "
                   "the bundled MiniLM; --write needs a local directory)")
    p.add_argument("--task", default="text-classification")
    p.add_argument("--labels", default="")
    p.add_argument("--partners", type=int, default=3, help="simulated partners sharing the "
                   "public file: rows / partners ≈ a real partner's rows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--candidates", default="", help="comma-separated (default: every one of "
                   "the task's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run-config key, as in simulate")
    p.add_argument("--out", type=Path, help="also write the whole record (every candidate's "
                   "score and seconds) to this JSON file")
    p.add_argument("--write", action="store_true", help=f"write the choice as {RECIPE_FILE} "
                   "into the base model's directory")


def handle(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    if args.partners < 2:
        raise ConfigError(f"choose-recipe: --partners {args.partners}; at least 2")
    target = Path(args.base_model) if args.base_model else None
    if args.write and (target is None or not target.is_dir()):
        raise ConfigError(f"choose-recipe --write: --base-model {args.base_model!r} is not a "
                          "local directory to write the recipe into")
    config = RunConfig.from_mapping({**overrides, "task": args.task, "labels": args.labels,
                                     "base-model": args.base_model, "num-rounds": args.rounds,
                                     "data": str(args.public_data), **epsilon_keys(args.epsilon)})
    names = [n.strip() for n in args.candidates.split(",") if n.strip()] or None
    record = choose_recipe(config, args.partners, names)
    for name, m in sorted(record["measured"].items(), key=lambda kv: -kv[1].get("score", -1)):
        print(f"{name}: refused ({m['refused']})" if "refused" in m else
              f"{name}: {m['metric']} {m['score']:.4f} ({m['seconds']:.0f} s)")
    print(f"choice: {record['choice']} {record['keys']}")
    if args.out:
        atomic_write_json(args.out, record)
        print(f"wrote {args.out}")
    if args.write:  # beside the recipes of the model's other tasks, if any
        path = target / RECIPE_FILE  # type: ignore[operator]
        recipes = dict(read_recipes(path))
        recipes[args.task] = record
        atomic_write_json(path, {"recipes": recipes})
        print(f"wrote {target / RECIPE_FILE}: finetune = auto takes it for {args.task}")
    return 0
