"""Names of the records and keys in the Messages between the coordinator and partners.

Both Flower apps import these; nothing else should spell a key out.
"""

# RecordDict entries
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
EVALUATION = "evaluation"  # MetricRecord in a TRAIN reply: the received model's evaluation
PARTNER = "partner"

# ConfigRecord keys, coordinator -> partner
ROUND = "server-round"
MODEL_FINGERPRINT = "base-model-fingerprint"
# in a TRAIN message: the round whose aggregate its weights are; the partner evaluates them on its
# held-out split before training and replies with EVALUATION (absent: nothing to evaluate)
EVALUATE_ROUND = "evaluate-round"
# in an EVALUATE message of a monitoring run (run config `monitor`): the id of the release whose
# weights it carries; the partner scores them on its monitoring data and replies counts only
MONITOR_RELEASE = "monitor-release"
PREFLIGHT = "preflight"  # an EVALUATE Message that asks: do you accept the whole plan?

# MetricRecord keys, partner -> coordinator (num-examples counts examples, never batches)
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
PER_PERSON = "per-person"  # 1.0 when ε protects a person (all its rows), 0.0 an example
CORRECTIONS = "corrections"  # reviewed corrections the partner folded into its data (a count)
PERSONS = "persons"  # per-person DP: persons in the training split (a count)
CLIPPED_FRACTION = "clipped-fraction"
UPDATE_NORM = "update-norm"
UPDATE_CLIPPED = "update-clipped"
TRAIN_SECONDS = "train-seconds"  # wall time of local training alone
GPU_PEAK_BYTES = "gpu-peak-bytes"  # CUDA partners only: peak allocated during the round
GPU_RESERVED_BYTES = "gpu-reserved-bytes"  # CUDA only: still reserved after the round's release
# the partner's DP plan (common.privacy.planner), from public quantities only (n, ε, δ, rounds, d)
PLAN_EXPECTED_BATCH = "plan-expected-batch"
PLAN_LEARNING_RATE = "plan-learning-rate"
PLAN_NOISE_TO_SIGNAL = "plan-noise-to-signal"  # predicted, over the run
PLAN_KEYS = {PLAN_EXPECTED_BATCH: "expected_batch", PLAN_LEARNING_RATE: "learning_rate",
             PLAN_NOISE_TO_SIGNAL: "predicted_noise_to_signal"}
EVAL_LOSS = "eval-loss"
ACCURACY = "accuracy"
MACRO_F1 = "macro-f1"
# token-classification: entity-level (seqeval), micro over entities; ACCURACY is then token
# accuracy and MACRO_F1 the mean F1 over entity types
ENTITY_F1 = "entity-f1"
ENTITY_PRECISION = "entity-precision"
ENTITY_RECALL = "entity-recall"
# per-class counts in evaluate replies, keyed f"{kind}/{label}" (common.evaluation.metrics builds
# them); the coordinator sums them over partners for pooled per-class precision / recall / F1
TRUE_POSITIVES = "tp"
FALSE_POSITIVES = "fp"
FALSE_NEGATIVES = "fn"

# ConfigRecord keys, partner -> coordinator
PARTNER_NAME = "name"
PRIVACY_HISTORY = "privacy-history"  # JSON list of [sigma, q, steps]
ACCEPTED = "accepted"  # the pre-flight's yes (nothing trained, nothing spent)
BUDGET = "max-epsilon"  # a partner's own budget (policy max-epsilon), where it set one
REFUSAL = "refusal"  # why the partner refused the round (budget, policy); nothing was trained
EVAL_REFUSAL = "evaluation-refusal"  # in a TRAIN reply: why it did not evaluate the received model

# Error replies, partner -> coordinator: Error.reason is one of these codes, never an exception's
# text (it can quote a row of the partner's data or a path); the details stay in the partner's log
ERROR_DATA = "partner-data-error"  # its data, corrections or monitoring file could not be read
ERROR_CONFIG = "partner-config-error"  # the run config or the partner's node config is invalid
ERROR_MODEL = "partner-model-error"  # the base model cannot be loaded or does not match the run's
ERROR_LEDGER = "partner-ledger-error"  # its privacy ledger or a checkpoint cannot be read
ERROR_UPDATE = "partner-update-error"  # the weights it received do not fit the model
ERROR_INTERNAL = "partner-internal-error"  # anything else
ERROR_STOPPED = "partner-stopped"  # its operator stopped it (SIGINT / SIGTERM) mid-Message
ERROR_REASONS = (ERROR_DATA, ERROR_CONFIG, ERROR_MODEL, ERROR_LEDGER, ERROR_UPDATE,
                 ERROR_INTERNAL, ERROR_STOPPED)

# Secure aggregation (server/secagg.py <-> client/secagg.py): one ConfigRecord SECAGG in both
# directions; SECAGG_STAGE in the coordinator's record says which step a TRAIN message asks for
SECAGG = "secagg"
SECAGG_STAGE = "stage"
SECAGG_SETUP = "setup"  # train, keep the update local, send public keys
SECAGG_SHARE_KEYS = "share-keys"  # receive the keys, send encrypted key shares
SECAGG_MASK = "collect-masked-vectors"  # receive shares, send the masked update
SECAGG_CHECK = "consistency-check"  # receive who is summed, sign this partner's view of the round
SECAGG_UNMASK = "unmask"  # check t signatures of the same view, send the shares that unmask
SECAGG_STAGES = (SECAGG_SETUP, SECAGG_SHARE_KEYS, SECAGG_MASK, SECAGG_CHECK, SECAGG_UNMASK)
SECAGG_THRESHOLD = "threshold"
SECAGG_CLIPPING_RANGE = "clipping-range"
SECAGG_QUANTIZATION_RANGE = "quantization-range"
SECAGG_MOD_RANGE = "mod-range"
SECAGG_MAX_WEIGHT = "max-weight"  # setup: the run's max-partner-weight, checked by partners
SECAGG_PUBLIC_KEYS = "public-keys"  # [pk1 (mask agreement), pk2 (share encryption)]
SECAGG_SIGNERS = "signers"  # partners' signing public keys (OpenSSH), one per node
SECAGG_SIGNATURES = "signatures"  # of the key statements (share-keys) or of the view (unmask)
SECAGG_NODES = "nodes"
SECAGG_CIPHERTEXTS = "ciphertexts"
SECAGG_SOURCES = "sources"
SECAGG_SUMMED = "summed"  # consistency check: the partners whose masked update is in the sum
SECAGG_SHARES = "shares"
SECAGG_MASKED = "masked"  # ArrayRecord entry: the masked, quantized update as uint32
