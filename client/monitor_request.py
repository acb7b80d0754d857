"""A partner's answer to a monitoring request: in a monitoring run (run config ``monitor``) the
coordinator sends a release's weights once, in an EVALUATE Message that names the release; the
partner scores them on its monitoring data and replies counts only (num-examples, the task's
metrics and per-class and per-group counts, small groups suppressed): no text, no prediction per
row, no loss. Nothing is trained, no ε is spent; each answer is one of the partner's
``max-evaluations`` exact answers over all runs on its data (client.answers). No flwr here.

Only under the partner's policy: node-config ``monitoring = counts`` (a partner with its own data
is ``off`` unless it says so; a simulated partner answers, as it evaluates, unless told ``off``).
Its monitoring data: node-config ``monitor-data`` (a labelled file), else, for a simulated
partner, its whole slice of the run's ``data`` file (partitioned as for training).
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from client.answers import pay_for_monitoring
from client.data import deidentified, simulated_slice
from client.partner import AUDIT_LOG, append_audit, partner_device, weights_sha256
from client.policy import PartnerSettings
from common import protocol as P
from common.config import RunConfig
from common.model.device import free_cached
from common.errors import DataError, PrivacyError
from common.sources import run_labels
from common.tasks import LabelledData, get_task

logger = logging.getLogger(__name__)


def monitoring_data(config: RunConfig, partner: PartnerSettings,
                    labels: tuple[str, ...]) -> LabelledData:
    """The examples a monitoring request is scored on: ``monitor-data``, else a simulated
    partner's whole slice of ``data`` (or of the embedded demo data); with its group column,
    and its person column beside it (a group's floor then counts distinct persons)."""
    task = get_task(config.task)
    subgroup = partner.group_key(config) or None
    columns = {"subgroup_column": subgroup,
               "person_column": (partner.person_key(config) or None) if subgroup else None}
    if partner.monitor_data:
        return task.read(partner.monitor_data, config, labels, partner.text_column,
                         partner.label_column, **columns)
    if partner.has_own_data:
        raise PrivacyError(f"{partner.name} has monitoring = counts but no monitor-data: set "
                           "node-config monitor-data to a labelled file of new data")
    if not config.data:
        return task.demo_data(partner.partition_id, config, labels)
    return simulated_slice(config, partner, labels, **columns)


def answer_monitoring(config: RunConfig, partner: PartnerSettings,
                      shared: Mapping[str, np.ndarray], fingerprint: str, release_id: str,
                      run_id: str) -> dict[str, float]:
    """The counts of the release's weights ``shared`` on this partner's monitoring data.
    PrivacyError (a refusal the coordinator records) when the policy says off, or when the
    data cannot be read (the reason stays in this partner's log: it may quote a row)."""
    if partner.monitoring != "counts":
        raise PrivacyError(f"{partner.name} does not answer monitoring requests (node-config "
                           "monitoring = off); set monitoring = counts to send counts")
    partner.check_base_model(config)  # its allowed-base-models hold here too
    labels = run_labels(config, partner.has_own_data)
    try:
        data = monitoring_data(config, partner, labels)
    except DataError as exc:
        logger.error("%s: monitoring data unreadable: %s", partner.name, exc)
        raise PrivacyError(f"{partner.name}'s monitoring data could not be read; its own log "
                           "says why") from exc
    if partner.masks_text(config):
        data, _ = deidentified(data, config.task)
    pay_for_monitoring(config, partner, run_id)  # exact counts: one of its max-evaluations
    metrics = _score(config, partner, shared, fingerprint, labels, data)
    metrics.pop(P.EVAL_LOSS, None)  # counts only: an exact loss says more than counts do
    append_audit(partner.ledger_root(config) / AUDIT_LOG, {
        "partner": partner.name, "run_id": run_id, "round": 0, "message": "monitoring",
        "release_id": release_id, "model_sha256": weights_sha256(shared),
        "examples": len(data), "metrics_sent": len(metrics), "bytes_sent": 0})
    logger.info("%s monitoring release %s: %d examples scored, counts sent", partner.name,
                release_id, len(data))
    return metrics


def _score(config: RunConfig, partner: PartnerSettings, shared: Mapping[str, np.ndarray],
           fingerprint: str, labels: tuple[str, ...], data: LabelledData) -> dict[str, float]:
    """The task's own evaluate of the base model with ``shared`` loaded, on this partner's
    device; ModelError when the frozen base weights are not the release's."""
    from client.received import shared_model
    from common.model.factory import load_tokenizer

    model = shared_model(config, partner, labels, shared, fingerprint, "the release's")
    device = partner_device(config, partner)
    try:
        task, tokenizer = get_task(config.task), load_tokenizer(config, not partner.allow_hub)
        return task.evaluate(model.to(device), tokenizer, data, config.max_length,
                             min_group_size=partner.smallest_group(config))
    finally:
        free_cached(device)
