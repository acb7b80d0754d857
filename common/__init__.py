"""Task code shared by the coordinator and the partners: config, data, model, training, privacy.

Nothing in this package imports ``flwr``; the Flower apps in ``server`` and ``client`` translate
Messages into calls to these functions. No imports here: this file runs before the partner's
code check (client.pinning), which imports common.code_hash.
"""
