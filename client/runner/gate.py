"""Which code answers a Message: decided from the FAB's bytes, before any file of it is
installed or imported.

- The FAB is hashed in memory over every file it carries (common.code_hash.fab_code: the
  hash `consortium partner approve` prints for the reviewed checkout).
- A partner with ``allowed-code`` refuses a FAB whose hash is not in it, or that holds compiled
  code no source of it vouches for (client.pinning.verdict: the same reasons the App's own check
  gives).
- A FAB with the hash of the partner's own installed copy of the App runs that copy: same files,
  nothing written.
- Any other FAB that may run (approved, or at a partner that pins no code) is installed as
  Flower installs it (``flwr.cli.install.install_from_fab`` into ``$FLWR_HOME/apps``), and the
  installed folder is hashed again: it must hold exactly the FAB's files.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from flwr.supercore.fab import Fab

from client.pinning import verdict
from common.code_hash import app_code, code_hash, fab_code

logger = logging.getLogger(__name__)
_REMEMBERED = 8  # FAB verdicts kept, by the SHA-256 of the FAB's bytes


@dataclass(frozen=True)
class Verdict:
    """Where the App to run is (``root``), or why the FAB is refused (``refusal``)."""

    code: str  # the FAB's code hash ('' when it could not be read)
    root: Path | None = None
    refusal: str = ""
    own_copy: bool = False  # root is the partner's own installed copy of the App


class Gate:
    """The partner's code check over FABs, with ``allowed`` its approved code hashes (empty:
    any code runs) and ``own_root`` its own installed copy of the App (None: none)."""

    def __init__(self, name: str, allowed: tuple[str, ...], own_root: Path | None,
                 flwr_home: Path | None = None) -> None:
        self.name, self.allowed, self.own_root = name, allowed, own_root
        self.flwr_home = flwr_home
        self._seen: OrderedDict[str, Verdict] = OrderedDict()

    def own_code(self) -> str:
        """The code hash of the partner's own copy as it is now ('' when it has none, or one
        that holds compiled code no source vouches for: then FABs are installed instead)."""
        if self.own_root is None:
            return ""
        try:
            return code_hash(self.own_root)
        except Exception as exc:  # noqa: BLE001 - no own copy to run: FABs get installed
            logger.warning("%s: its own copy of the App at %s is not used (%s)", self.name,
                           self.own_root, exc)
            return ""

    def check(self, fab: Fab) -> Verdict:
        """The verdict on ``fab``, remembered by the hash of its bytes."""
        key = hashlib.sha256(fab.content).hexdigest()
        if key in self._seen:
            self._seen.move_to_end(key)
            return self._seen[key]
        found = self._check(fab, key)
        if found.root is not None or found.code:  # an unreadable FAB is not remembered
            self._seen[key] = found
            while len(self._seen) > _REMEMBERED:
                self._seen.popitem(last=False)
        return found

    def still_valid(self, found: Verdict) -> bool:
        """Whether the App at ``found.root`` still holds the code that was approved: checked
        each time a worker starts on it."""
        if found.root is None:
            return False
        now = self.own_code() if found.own_copy else app_code(found.root).sha256
        return now == found.code

    def _check(self, fab: Fab, key: str) -> Verdict:
        if fab.hash_str and fab.hash_str != key:
            return Verdict("", refusal=f"the run's FAB does not match its hash; {self.name} "
                                       "runs only code it could check")
        try:
            code = fab_code(fab.content)
        except Exception as exc:  # noqa: BLE001 - a FAB that cannot be read cannot run
            logger.error("%s cannot read the run's FAB: %s", self.name, exc)
            return Verdict("", refusal=f"the run's FAB cannot be read; {self.name} runs only "
                                       "code it could check")
        if self.allowed:
            reason = verdict(self.name, self.allowed, code)
            if reason:
                return Verdict(code.sha256, refusal=reason)
        if self.own_root is not None and code.sha256 == self.own_code():
            return Verdict(code.sha256, self.own_root, own_copy=True)
        return self._install(fab, code.sha256)

    def _install(self, fab: Fab, code: str) -> Verdict:
        from flwr.cli.install import install_from_fab

        root = install_from_fab(fab.content, self.flwr_home, skip_prompt=True)
        installed = app_code(root).sha256
        if installed != code:  # a folder left there before (by hand, or half installed)
            logger.error("%s: %s holds other files than the FAB (%s…, not %s…); remove the "
                         "folder so that Flower installs the FAB again", self.name, root,
                         installed[:16], code[:16])
            return Verdict(code, refusal=f"the App installed for this FAB at {self.name} "
                                         "differs from the FAB; its own log says why")
        logger.info("%s installed the run's App %s… at %s", self.name, code[:16], root)
        return Verdict(code, root)
