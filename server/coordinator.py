"""The coordinator's round loop over Flower's Grid: send, collect, validate, aggregate, record.

Flower carries the Messages (simulation or deployment engine alike); the maths live in
server.aggregation and the files in server.outputs / server.checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore.inflatable.inflatable_utils import ObjectPushError

from client.records import from_array_record, to_array_record
from common import protocol as P
from common.config import RunConfig
from common.errors import ConsortiumError
from common.model import build_model, frozen_fingerprint, trainable_state
from common.sources import run_labels
from common.weights import fixed_batch_size
from server.aggregation import RoundFold
from server.central_dp import CentralDP, coordinator_rng, record_round
from server.checkpoint import (PENDING_LINE, Checkpoint, check_same_config,
                               latest_checkpoint, save_checkpoint)
from server.evaluation import main_metric, progress_line, summarize_held_out, summarize_round
from server.held_out import HeldOutSet
from server.outputs import (METRICS_FILE, append_metrics, export_model, json_safe,
                            privacy_report, record_partner, truncate_metrics,
                            write_privacy_report)
from server.report import write_report
from server.run_data import last_metrics_line

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    round: int
    arrays: dict[str, np.ndarray]
    partners: dict[str, dict[str, Any]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)  # node id -> partner name, as replied


def _messages(grid: Grid, kind: str, rnd: int, arrays: dict[str, np.ndarray],
              fingerprint: str, min_nodes: int) -> list[Message]:
    """One message per connected partner, after waiting until at least ``min_nodes`` are."""
    _, node_ids = sample_nodes(grid, min_nodes, min_nodes)  # waits, then lists all connected
    content = RecordDict({P.ARRAYS: to_array_record(arrays), P.CONFIG: ConfigRecord(
        {P.ROUND: rnd, P.MODEL_FINGERPRINT: fingerprint})})
    return [Message(content=content, message_type=kind, dst_node_id=n, group_id=str(rnd))
            for n in node_ids]


def push_messages(grid: Grid, messages: list[Message], tries: int = 5,
                  wait: float = 2.0) -> set[str]:
    """Push, re-pushing the same Messages when an object push was refused. Flower's HTTP client
    retries a request whose first attempt may already have landed (a SuperLink frozen for a
    while answers both), and the SuperLink refuses the duplicate object ("push session may have
    expired"). Re-pushing is idempotent: the SuperLink keys Messages by content id and asks only
    for the objects it still lacks, so no partner gets an instruction twice."""
    for attempt in range(1, tries + 1):
        try:
            return {i for i in grid.push_messages(messages) if i}
        except ObjectPushError as exc:
            if attempt == tries:
                raise
            logger.warning("push %d/%d refused (%s); pushing the same messages again",
                           attempt, tries, exc)
            time.sleep(wait * attempt)
    raise AssertionError("unreachable")


def stream_replies(grid: Grid, messages: list[Message], timeout: float,
                   names: dict[int, str], failures: list[dict[str, Any]],
                   poll: float = 0.5) -> Iterator[Message]:
    """Yield good replies as they arrive (``send_and_receive`` returns them all at once), so
    each update can be folded into the running sum and dropped: memory O(model), not O(K ×
    model). Error replies and partners silent past ``timeout`` are appended to ``failures``."""
    sent = {m.metadata.dst_node_id for m in messages}
    pending = push_messages(grid, messages)
    deadline = time.time() + timeout
    while pending and time.time() < deadline:
        for reply in grid.pull_messages(pending):
            pending.discard(reply.metadata.reply_to_message_id)
            node = reply.metadata.src_node_id
            sent.discard(node)
            if reply.has_error():
                reason = (reply.error.reason or "").strip().splitlines()
                failures.append({"partner": names.get(node, f"node-{node}"),
                                 "reason": reason[-1] if reason else f"code {reply.error.code}"})
                continue
            names[node] = _partner_name(reply)
            yield reply
        if pending:
            time.sleep(poll)
    failures.extend({"partner": names.get(node, f"node-{node}"),
                     "reason": f"no reply within round-timeout {timeout:g} s"} for node in sent)


def _partner_name(reply: Message) -> str:
    rec = reply.content.config_records.get(P.PARTNER)
    return str(rec[P.PARTNER_NAME]) if rec else f"node-{reply.metadata.src_node_id}"


def gpu_line(metrics_by_partner: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """CUDA partners' round memory for metrics.jsonl: peak allocated, and what the process still
    reserves after the round (it should not grow round over round); empty for CPU partners."""
    gpu = {name: {"peak": float(m[P.GPU_PEAK_BYTES]),
                  "reserved": float(m.get(P.GPU_RESERVED_BYTES, math.nan))}
           for name, m in metrics_by_partner.items() if P.GPU_PEAK_BYTES in m}
    return {"partner_gpu_bytes": gpu} if gpu else {}


def train_phase(grid: Grid, config: RunConfig, state: RunState, rnd: int,
                fingerprint: str) -> dict[str, Any]:
    if config.secure_aggregation:  # the coordinator sees only the sum: server/secagg_phase.py
        from server.secagg_phase import secure_train_phase  # imports this module

        return secure_train_phase(grid, config, state, rnd, fingerprint)
    failures: list[dict[str, Any]] = []
    messages = _messages(grid, MessageType.TRAIN, rnd, state.arrays, fingerprint,
                         config.min_partners)
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
        name = _partner_name(reply)
        partner = reply.content.config_records[P.PARTNER]
        if partner.get(P.REFUSAL):
            fold.refuse(name, str(partner[P.REFUSAL]))
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
    for failure in failures:
        logger.warning("round %d: %s", rnd, failure)
    if len(fold.accepted) < config.min_partners:
        raise ConsortiumError(f"round {rnd}: {len(fold.accepted)} usable update(s), min-partners "
                              f"is {config.min_partners}; stopping. Failures: {failures}. The "
                              "last checkpoint is kept: fix the partners and resume")
    state.arrays = fold.result()
    central = record_round(state.partners, fold.accepted, [n for _, n in fold.losses],
                           fold.central, fold.noise_std)
    if central:
        logger.info("round %d: central DP noise σ = %.6g over %d update(s); max partner-level "
                    "ε %.4f", rnd, fold.noise_std, len(fold.accepted),
                    central["central_dp"]["max_partner_level_epsilon"])
    return {"partners_replied": fold.accepted, "failures": failures, **central,
            "train_loss": fold.train_loss(), "train_phase_seconds": round(time.time() - started, 3),
            "partner_train_seconds": train_seconds, **gpu_line(replied), "upload_bytes": upload,
            "download_bytes": download}


def evaluate_phase(grid: Grid, config: RunConfig, state: RunState, rnd: int,
                   fingerprint: str) -> dict[str, Any]:
    failures: list[dict[str, Any]] = []
    messages = _messages(grid, MessageType.EVALUATE, rnd, state.arrays, fingerprint, 1)
    per_partner = {}
    for reply in stream_replies(grid, messages, config.round_timeout, state.names, failures):
        refusal = reply.content.config_records[P.PARTNER].get(P.REFUSAL)
        if refusal:  # the partner's policy: evaluation off, or not a round it trained
            failures.append({"partner": _partner_name(reply), "reason": f"refused: {refusal}"})
        else:
            per_partner[_partner_name(reply)] = dict(reply.content.metric_records[P.METRICS])
    for failure in failures:
        logger.warning("round %d evaluation: %s", rnd, failure)
    summary = summarize_round(per_partner, main_metric(config.task))
    mean = summary["eval_mean"]
    return {"eval_failures": failures, "eval_accuracy": mean.get("accuracy"),
            "eval_macro_f1": mean.get("macro_f1"), "eval_loss": mean.get("eval_loss"),
            **summary, "eval_download_bytes": _nbytes(state.arrays) * len(messages)}


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
    return RunState(ckpt.round, ckpt.arrays, ckpt.state["partners"]), pending


def _close_round(grid: Grid, config: RunConfig, state: RunState, out: Path,
                 line: dict[str, Any], fingerprint: str, held_out: HeldOutSet | None,
                 started: float) -> dict[str, Any]:
    """Evaluate the round's released weights, then append its metrics line."""
    line = {**line, **evaluate_phase(grid, config, state, int(line["round"]), fingerprint)}
    line["download_bytes"] += line.pop("eval_download_bytes")  # train + evaluate sends
    if held_out:
        line["eval_coordinator"] = summarize_held_out(held_out.evaluate(state.arrays),
                                                      held_out.path.name)
    line["seconds"] = round(time.time() - started, 3)
    append_metrics(out, line)
    done = json_safe(line)
    logger.info(progress_line(done, config.num_rounds, config.dp))
    return done


def run_federation(grid: Grid, config: RunConfig) -> Path:
    """Run every round, checkpointing each; export the shared model and the privacy report.

    A round's order: train (the release) → checkpoint (weights, every partner's privacy record
    and the round's metrics so far) → evaluate (the first message carrying the new weights) →
    metrics line. A crash after the checkpoint loses nothing: resume evaluates that round again
    and writes its line (truncate_metrics drops lines of rounds past the checkpoint)."""
    out = Path(config.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    labels = run_labels(config)
    model = build_model(config, labels)
    fingerprint = frozen_fingerprint(model)
    state, pending = _start_state(config, out, trainable_state(model))
    del model
    held_out = HeldOutSet.load(config, labels)  # before round 1: a bad file stops nothing late
    logger.info("run -> %s: %d rounds, labels %s", out, config.num_rounds, list(labels))
    last_line: dict[str, Any] | None = None
    if pending is not None:
        logger.info("round %d was released before the coordinator stopped; evaluating it now",
                    state.round)
        last_line = _close_round(grid, config, state, out, pending, fingerprint, held_out,
                                 time.time())
    for rnd in range(state.round + 1, config.num_rounds + 1):
        started = time.time()
        line: dict[str, Any] = {"round": rnd}
        line.update(train_phase(grid, config, state, rnd, fingerprint))
        eps = [p["epsilon"] for p in state.partners.values()]
        line["max_epsilon"] = (max(e for e in eps if e is not None)
                               if config.dp and all(e is not None for e in eps) else None)
        line["epsilon_per_partner"] = {n: p["epsilon"] for n, p in sorted(state.partners.items())}
        state.round = rnd
        save_checkpoint(out / "checkpoints", Checkpoint(rnd, state.arrays, {
            "config": config.to_mapping(), "partners": state.partners,
            PENDING_LINE: json_safe(line)}))
        last_line = _close_round(grid, config, state, out, line, fingerprint, held_out, started)
    report = privacy_report(config, state.partners)
    write_privacy_report(out, report)
    export_model(out, config, labels, state.arrays, report,
                 last_line or last_metrics_line(out / METRICS_FILE))
    try:  # after the export: a report that fails must not cost the model
        write_report(out, config)
    except Exception:  # noqa: BLE001 - logged in full; the run's outputs stand
        logger.exception("the run report could not be written; run `consortium report %s`", out)
    return out
