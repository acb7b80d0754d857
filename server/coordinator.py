"""The coordinator's round loop over Flower's Grid: send, collect, validate, aggregate, record.

Flower carries the Messages (simulation or deployment engine alike); the maths live in
server.aggregation and the files in server.outputs / server.checkpoint.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import MessageType
from flwr.serverapp import Grid

from common.wire.records import from_array_record
from common import protocol as P
from common.config import RunConfig
from common.errors import ConsortiumError, RunStopped
from common.training.fingerprint import frozen_fingerprint
from common.model.factory import build_model, trainable_state
from common.sources import run_labels
from common.model.warm_start import check_public_disjoint
from common.wire.weights import fixed_batch_size
from server.aggregation import RoundFold
from server.central_dp import (INHERITED, CentralDP, coordinator_rng, parent_partner_level,
                               record_round)
from server.checkpoint import (PENDING_LINE, Checkpoint, check_same_config,
                               latest_checkpoint, save_checkpoint)
from server.evaluation import main_metric, progress_line, summarize_held_out, summarize_round
from server.held_out import HeldOutSet
from server.release import initial_weights
from server.outputs import (METRICS_FILE, append_metrics, export_model, json_safe,
                            privacy_report, record_partner, record_spending,
                            truncate_metrics, write_privacy_report)
from server.report import write_live_report, write_report
from server.monitoring import run_monitoring
from server.messaging import (STOPPED, Evaluations, RunState, absent, gpu_line, make_messages,
                              partner_name, stream_replies)
from server.run_data import last_metrics_line
from server.tracking import Tracker, open_tracker
from server.secagg_phase import secure_train_phase

logger = logging.getLogger(__name__)


def preflight_phase(grid: Grid, config: RunConfig, state: RunState, fingerprint: str) -> None:
    """Before the first round this run trains: every connected partner accepts or refuses the
    whole plan (client.preflight; nothing trained or spent). Fewer than min-partners accepting
    stops the run in one line that lists each refusal, before anyone has spent ε."""
    first = state.round + 1
    failures: list[dict[str, Any]] = []
    messages = make_messages(grid, MessageType.EVALUATE, first, state.arrays, fingerprint,
                             config.min_partners, extra={P.PREFLIGHT: 1})
    accepted = []
    for reply in stream_replies(grid, messages, config.round_timeout, state.names, failures):
        partner = reply.content.config_records[P.PARTNER]
        state.take_budget(reply)
        if partner.get(P.ACCEPTED):
            accepted.append(partner_name(reply))
        else:
            failures.append({"partner": partner_name(reply),
                             "reason": f"refused: {partner.get(P.REFUSAL, 'no reason given')}"})
    for failure in failures:
        logger.warning("pre-flight: %s", failure)
    logger.info("pre-flight: %d of %d partners accept the plan from round %d (%s)",
                len(accepted), len(messages), first, ", ".join(sorted(accepted)) or "none")
    if len(accepted) < config.min_partners:
        said = "; ".join(f"{f.get('partner')}: {brief(str(f.get('reason')))}" for f in failures)
        raise RunStopped(f"pre-flight: {len(accepted)} of {len(messages)} partner(s) accept the "
                         f"plan, min-partners is {config.min_partners}. {said}. Nothing was "
                         "trained and no partner spent any ε")


def brief(reason: str) -> str:
    """A partner's reason without its long parenthesised detail (the log above keeps it)."""
    return re.sub(r" \((?:[^()]|\([^()]*\)){40,}\)", "", reason)


def train_phase(grid: Grid, config: RunConfig, state: RunState, rnd: int, fingerprint: str,
                evals: Evaluations) -> dict[str, Any]:
    """Round ``rnd``'s TRAIN Messages carry the model after round ``evals.round`` (rnd − 1, or 0
    when no evaluation is asked); each partner evaluates it first and its reply brings that
    evaluation (into ``evals``) with its update."""
    if config.secure_aggregation:  # the coordinator sees only the sum: server/secagg_phase.py
        return secure_train_phase(grid, config, state, rnd, fingerprint, evals)
    failures: list[dict[str, Any]] = []
    messages = make_messages(grid, MessageType.TRAIN, rnd, state.arrays, fingerprint,
                             config.min_partners, evals.round)
    failures.extend(absent(messages, state.names))
    robust = "" if config.aggregation == "fedavg" else config.aggregation
    fold = RoundFold(state.arrays, config.update_clip_norm, robust=robust,
                     compression=config.compression, failures=failures,
                     central=CentralDP.from_config(config), rng=coordinator_rng(),
                     max_weight=config.max_partner_weight, dp=config.dp,
                     batch_size=fixed_batch_size(config.batch_size))
    started = time.time()
    train_seconds: dict[str, float | None] = {}  # the partners' own, for P5
    replied: dict[str, dict[str, float]] = {}  # each partner's reply metrics
    download, upload = _nbytes(state.arrays) * len(messages), 0  # as sent / as received
    for reply in stream_replies(grid, messages, config.round_timeout, state.names, failures):
        name = partner_name(reply)
        evals.take(reply)  # before the update's fate: a refusal to train may still evaluate
        partner = reply.content.config_records[P.PARTNER]
        state.take_budget(reply)
        if partner.get(P.REFUSAL):
            fold.refuse(name, str(partner[P.REFUSAL]))
            if P.PRIVACY_HISTORY in partner:  # it spent, then refused or failed: still counted
                record_spending(state.partners, name, config, str(partner[P.PRIVACY_HISTORY]))
            continue
        metrics = dict(reply.content.metric_records.get(P.METRICS, {}))
        update = from_array_record(reply.content.array_records[P.ARRAYS]) \
            if P.ARRAYS in reply.content.array_records else {}
        train_seconds[name] = metrics.get(P.TRAIN_SECONDS)
        replied[name] = metrics
        upload += _nbytes(update)
        fold.offer(name, update, metrics)  # a rejected update's ε is spent all the same
        record_partner(state.partners, name, metrics, config,
                       str(partner.get(P.PRIVACY_HISTORY, "")))
    evals.missing(failures, f"round {rnd} train reply")
    for failure in failures:
        logger.warning("round %d: %s", rnd, failure)
    if len(fold.accepted) < config.min_partners:
        said = "; ".join(f"{f.get('partner')}: {brief(str(f.get('reason')))}" for f in failures)
        left = [str(f.get("partner")) for f in failures if f.get("reason") == STOPPED]
        fix = (f"start {', '.join(left)} again with the same `consortium partner start` command"
               if left else "fix the partners")
        kept = (f"the last checkpoint is kept: {fix}, then resume" if rnd > 1 else
                f"no round finished, so there is nothing to resume: {fix}, then start again")
        raise RunStopped(f"round {rnd}: {len(fold.accepted)} usable update(s), min-partners is "
                         f"{config.min_partners}. {said}. {kept}")
    state.arrays = fold.result()
    central = record_round(state.partners, fold.accepted, [n for _, n in fold.losses],
                           fold.central, fold.noise_std, state.inherited)
    if central:
        most = central["central_dp"]["max_partner_level_epsilon"]
        logger.info("round %d: central DP noise σ = %.6g over %d update(s); max partner-level "
                    "ε %s", rnd, fold.noise_std, len(fold.accepted),
                    "unbounded" if most is None else f"{most:.4f}")
    return {"partners_replied": fold.accepted, "failures": failures, **central,
            "train_loss": fold.train_loss(), "train_phase_seconds": round(time.time() - started, 3),
            "partner_train_seconds": train_seconds, **gpu_line(replied), "upload_bytes": upload,
            "download_bytes": download}


def evaluate_phase(grid: Grid, config: RunConfig, state: RunState,
                   fingerprint: str) -> Evaluations:
    """The final model's own EVALUATE Messages: the only model no TRAIN Message carries."""
    failures: list[dict[str, Any]] = []
    messages = make_messages(grid, MessageType.EVALUATE, state.round, state.arrays, fingerprint,
                             1)
    evals = Evaluations(state.round, download_bytes=_nbytes(state.arrays) * len(messages))
    for reply in stream_replies(grid, messages, config.round_timeout, state.names, failures):
        evals.take_final(reply)
        spent = reply.content.config_records[P.PARTNER].get(P.PRIVACY_HISTORY)
        if spent:  # a noisy evaluation (or a failure after one): its ε is in the report
            record_spending(state.partners, partner_name(reply), config, str(spent))
    evals.missing(failures)
    return evals


def evaluation_fields(config: RunConfig, evals: Evaluations) -> dict[str, Any]:
    """The partners' part of a metrics line: their evaluations of the line's model."""
    for failure in evals.failures:
        logger.warning("round %d evaluation: %s", evals.round, failure)
    summary = summarize_round(evals.per_partner, main_metric(config.task))
    mean = summary["eval_mean"]
    return {"eval_failures": evals.failures, "eval_accuracy": mean.get("accuracy"),
            "eval_macro_f1": mean.get("macro_f1"), "eval_loss": mean.get("eval_loss"),
            **summary}


def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays.values()))


def _start_state(config: RunConfig, out: Path,
                 initial: dict[str, np.ndarray]) -> tuple[RunState, dict[str, Any] | None]:
    """The state to run from, and the metrics line of a checkpointed round whose evaluation
    never finished (None when every checkpointed round has its line)."""
    ckpt_dir = out / "checkpoints"
    existing = list(ckpt_dir.glob("round-*.json"))
    if existing and not config.resume:
        raise ConsortiumError(f"{out} already holds a run; set resume=true to continue it or "
                              "choose another out-dir")
    if not config.resume:
        return RunState(0, initial), None
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is None:
        raise ConsortiumError(f"resume=true but {ckpt_dir} holds no usable checkpoint")
    check_same_config(ckpt.state["config"], config.to_mapping())
    written = truncate_metrics(out, ckpt.round)
    logger.info("resuming %s after round %d of %d", out, ckpt.round, config.num_rounds)
    pending = ckpt.state.get(PENDING_LINE) if written < ckpt.round else None
    return RunState(ckpt.round, ckpt.arrays, ckpt.state["partners"],
                    inherited=ckpt.state.get(INHERITED) or {}), pending


def _own_evaluation(line: dict[str, Any], held_out: HeldOutSet | None, state: RunState,
                    started: float) -> None:
    """The coordinator's part of the line of the round just checkpointed: its own held-out
    evaluation of the round's model, and the round's seconds (train, checkpoint, this)."""
    if held_out and "eval_coordinator" not in line:
        line["eval_coordinator"] = summarize_held_out(held_out.evaluate(state.arrays),
                                                      held_out.path.name)
    line["seconds"] = round(line.get("seconds", 0.0) + time.time() - started, 3)


def _write_line(out: Path, config: RunConfig, line: dict[str, Any], evals: Evaluations,
                tracker: Tracker | None) -> dict[str, Any]:
    """Complete a round's metrics line with the partners' evaluations of its model; append."""
    line = {**line, **evaluation_fields(config, evals)}
    line["download_bytes"] += evals.download_bytes  # the final model's EVALUATE Messages
    append_metrics(out, line)
    done = json_safe(line)
    logger.info(progress_line(done, config.num_rounds, config.dp))
    if tracker is not None:
        tracker.log_round(done)
    return done


def run_federation(grid: Grid, config: RunConfig) -> Path:
    """Run every round, checkpointing each; export the shared model and the privacy report.

    One Message per partner per round. Round r's order: TRAIN (carrying the model after round
    r − 1, which each partner evaluates first; its reply brings that evaluation with its
    update) → aggregate (the release, in memory) → metrics line r − 1 (round r − 1's training
    + the evaluation of its model) → checkpoint r (weights, every partner's privacy record,
    line r so far) → the coordinator's own held-out evaluation. After the last round the final
    model gets its own EVALUATE Messages and line N. A stop after checkpoint r and before line
    r loses nothing: resume asks for the evaluation of round r again (in round r + 1's TRAIN
    Messages, or the final EVALUATE); a partner that already evaluated it refuses, and the line
    says so. Line r − 1 is written before checkpoint r, so no resume ever lacks it;
    truncate_metrics drops lines of rounds past the checkpoint. With ``monitor`` set, the run
    trains nothing: it asks the partners to score that release (server.monitoring)."""
    if config.monitor:
        return run_monitoring(grid, config)
    out = Path(config.out_dir).resolve()
    labels = run_labels(config)
    check_public_disjoint(config, labels)
    model = build_model(config, labels)
    fingerprint = frozen_fingerprint(model)
    initial = initial_weights(config, labels, trainable_state(model), fingerprint)
    del model
    out.mkdir(parents=True, exist_ok=True)  # after the checks: a refused start writes nothing
    state, pending = _start_state(config, out, initial)
    # partner-level ε continues the release init-from names (kept in checkpoints for a resume)
    state.inherited = state.inherited or parent_partner_level(config)
    if state.round < config.num_rounds:  # a resumed run's partners are asked again
        preflight_phase(grid, config, state, fingerprint)
    held_out = HeldOutSet.load(config, labels)  # before round 1: a bad file stops nothing late
    tracker = open_tracker(config, out)
    try:
        return _run_rounds(grid, config, out, labels, state, pending, held_out, fingerprint,
                           tracker)
    finally:
        if tracker is not None:
            tracker.close()


def _run_rounds(grid: Grid, config: RunConfig, out: Path, labels: tuple[str, ...],
                state: RunState, pending: dict[str, Any] | None, held_out: HeldOutSet | None,
                fingerprint: str, tracker: Tracker | None) -> Path:
    logger.info("run -> %s: %d rounds, labels %s", out, config.num_rounds, list(labels))
    last_line: dict[str, Any] | None = None
    if pending is not None:
        logger.info("round %d was released before the coordinator stopped; its evaluation is "
                    "asked again", state.round)
        _own_evaluation(pending, held_out, state, time.time())
    for rnd in range(state.round + 1, config.num_rounds + 1):
        started = time.time()
        evals = Evaluations(int(pending["round"]) if pending else 0)
        line: dict[str, Any] = {"round": rnd}
        try:
            line.update(train_phase(grid, config, state, rnd, fingerprint, evals))
        except ConsortiumError:  # too few updates: the evaluations that came are kept
            if pending is not None:
                _write_line(out, config, pending, evals, tracker)
            raise
        if pending is not None:
            _write_line(out, config, pending, evals, tracker)
        eps = [p["epsilon"] for p in state.partners.values()]
        line["max_epsilon"] = (max(e for e in eps if e is not None)
                               if config.dp and all(e is not None for e in eps) else None)
        line["epsilon_per_partner"] = {n: p["epsilon"] for n, p in sorted(state.partners.items())}
        if state.budgets:
            line["budget_per_partner"] = dict(sorted(state.budgets.items()))
        state.round = rnd
        save_checkpoint(out / "checkpoints", Checkpoint(rnd, state.arrays, {
            "config": config.to_mapping(), "partners": state.partners, INHERITED: state.inherited,
            PENDING_LINE: json_safe(line)}))
        _own_evaluation(line, held_out, state, started)
        pending = line
        write_live_report(out, config, json_safe(line),
                          privacy_report(config, state.partners, state.inherited))
    if pending is not None:  # the final model: the only one no TRAIN Message carries
        started = time.time()
        evals = evaluate_phase(grid, config, state, fingerprint)
        pending["seconds"] = round(pending.get("seconds", 0.0) + time.time() - started, 3)
        last_line = _write_line(out, config, pending, evals, tracker)
    report = privacy_report(config, state.partners, state.inherited)
    write_privacy_report(out, report)
    export_model(out, config, labels, state.arrays, report,
                 last_line or last_metrics_line(out / METRICS_FILE))
    try:  # after the export: a report that fails must not cost the model
        write_report(out, config)
    except Exception:  # noqa: BLE001 - logged in full; the run's outputs stand
        logger.exception("the run report could not be written; run `consortium report %s`", out)
    return out
