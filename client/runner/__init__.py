"""The partner's runner: `consortium partner start` runs it beside Flower's SuperNode, in place
of the `flwr-clientapp` process Flower starts for every Message.

- ``main``: the process: the SuperNode in process-isolation mode, and the loop that claims its
  tasks;
- ``tasks``: the SuperNode's Runtime API, called as Flower's own SuperExec and ClientApp
  processes call it;
- ``gate``: the code check over a FAB's bytes, before any of it is installed or imported;
- ``workers`` and ``worker.py``: the warm process that answers Messages with a checked App and
  keeps what it loaded between them.

The App itself stays a plain Flower App (client/app.py): `flwr run` against any SuperNode runs
it as Flower does.
"""
