"""Local training at a partner: DP-SGD with Opacus or plain AdamW (loop), per-person DP-SGD
(person_dp), length-sorted micro-batches (batching), the learning-rate schedule (schedule), the
moving average of the weights (averaging), the progress bar (progress); and what a frozen encoder
lets a round skip: the pooled head and its cached features (features, head_features, feature_cache),
adapters in the top layers only (top_layers), where an encoder keeps its layers (encoder_layout) and
which frozen weights a model holds (fingerprint)."""
