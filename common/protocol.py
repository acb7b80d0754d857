"""Names of the records and keys in the Messages between the coordinator and partners.

Both Flower apps import these; nothing else should spell a key out.
"""

# RecordDict entries
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
PARTNER = "partner"

# ConfigRecord keys, coordinator -> partner
ROUND = "server-round"
MODEL_FINGERPRINT = "base-model-fingerprint"

# MetricRecord keys, partner -> coordinator (num-examples counts examples, never batches)
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
CLIPPED_FRACTION = "clipped-fraction"
UPDATE_NORM = "update-norm"
UPDATE_CLIPPED = "update-clipped"
EVAL_LOSS = "eval-loss"
ACCURACY = "accuracy"
MACRO_F1 = "macro-f1"

# ConfigRecord keys, partner -> coordinator
PARTNER_NAME = "name"
PRIVACY_HISTORY = "privacy-history"  # JSON list of [sigma, q, steps]
REFUSAL = "refusal"  # why the partner refused the round (budget, policy); nothing was trained
