"""The model: the factory and the trainable-parameter view (factory), where a partner trains
(device), the exported directory and its loaders (export), the pipeline copied into it
(pooled_pipeline), a release read back (release), and the warm start on public data (warm_start,
warm_start_train)."""
