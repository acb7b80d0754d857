"""The partner's own record of which rounds of which runs it trained and evaluated, so that the
coordinator gets at most one evaluation per round of a run the partner took part in.

Without it a coordinator could send any weights to ``evaluate`` as often as it liked and read
exact losses and counts on the private held-out split: a membership oracle. No flwr here.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import PrivacyError
from common.privacy.ledger import ledger_lock
from common.infra.storage import read_sealed_json, write_sealed_json

RUN_LOG_VERSION = 1
_TRAINED, _EVALUATED = "trained", "evaluated"


def run_log_path(root: Path, partner: str) -> Path:
    return Path(root) / f"{partner}.runs.json"


def _read(path: Path) -> dict[str, dict[str, list[int]]]:
    if not path.exists():
        return {}
    body = read_sealed_json(path)
    if body.get("version") != RUN_LOG_VERSION:
        raise PrivacyError(f"{path}: run log version {body.get('version')!r} is not "
                           f"{RUN_LOG_VERSION}")
    return body["runs"]


def _update(path: Path, run_id: str, kind: str, server_round: int,
            require_trained: bool) -> None:
    with ledger_lock(path):
        runs = _read(path)
        run = runs.setdefault(run_id, {_TRAINED: [], _EVALUATED: []})
        if require_trained and server_round not in run[_TRAINED]:
            raise PrivacyError(f"evaluation of round {server_round} of run {run_id} refused: "
                               "this partner did not train that round of that run, so the "
                               "weights are not an aggregate it took part in")
        if require_trained and server_round in run[_EVALUATED]:
            raise PrivacyError(f"evaluation of round {server_round} of run {run_id} refused: "
                               "this partner already evaluated that round once")
        if server_round not in run[kind]:
            run[kind].append(server_round)
        write_sealed_json(path, {"version": RUN_LOG_VERSION, "runs": runs}, mode=0o600)


def note_trained(root: Path, partner: str, run_id: str, server_round: int) -> None:
    """Record that this partner trained ``server_round`` of ``run_id``."""
    _update(run_log_path(root, partner), run_id, _TRAINED, server_round, require_trained=False)


def claim_evaluation(root: Path, partner: str, run_id: str, server_round: int) -> None:
    """Allow one evaluation of a round this partner trained; PrivacyError otherwise. Claimed
    before evaluating: a crash after this point loses the evaluation, never repeats it."""
    _update(run_log_path(root, partner), run_id, _EVALUATED, server_round, require_trained=True)
