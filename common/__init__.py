"""Task code shared by the coordinator and the partners, in layers that import only downwards
(tests/test_layers.py keeps them so), the ground first: the vocabulary (errors, protocol); infra/;
deid/ and privacy/; data/; training/; evaluation/; tasks/; the run configuration (config); then what
a run decides from it (sources, partition, partner_rows), what goes on the wire (wire/) and the
model (model/); and code_hash, the hash a partner approves.

Only common/wire/ imports ``flwr``; the Flower apps in ``server`` and ``client`` translate Messages
into calls to these functions. No imports here: this file runs before the partner's code check
(client.pinning), which imports common.code_hash.
"""
