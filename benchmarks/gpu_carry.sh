#!/usr/bin/env bash
# What a lent GPU machine needs for benchmarks/gpu_rows.sh, and how it is laid out there. That
# machine reaches no package index and takes at most 64 MiB of files per call, so:
#
#   bash benchmarks/gpu_carry.sh pack [DATASETS_DIR]   # here: writes .gpu/ (git-excluded, ~58 MB)
#   bash benchmarks/gpu_carry.sh unpack                # there: installs .gpu/whl into /tmp/site,
#                                                      # data to /tmp/ds, MiniLM to /tmp/minilm
#
# then `export PYTHONPATH=/tmp/site:$PWD` and `bash benchmarks/gpu_rows.sh PART OUT /tmp/ds
# /tmp/minilm`. The packages that machine's image lacks travel as wheels for its Python 3.12;
# the bundled MiniLM travels in float16 (45 MB) and is loaded there as float32 (every weight
# within 9.8e-4 of the checkpoint); only the data files the rows read travel, compressed.
set -euo pipefail
case ${1:?pack or unpack} in
pack)
  data=${2:-../shared/datasets}
  rm -rf .gpu && mkdir -p .gpu/whl
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl flwr==1.41.0 opacus==1.6.0 \
    cryptography==50.0.2 pycryptodome==3.24.1 grpcio-health-checking==1.81.1 iterators==0.0.2 \
    dill==0.4.1 cffi==2.1.1 pycparser==3.12 tomli==2.5.0 datasets==4.8.5 multiprocess==0.70.19 \
    flwr-datasets==0.6.1
  python -m pip wheel -q --no-deps -w .gpu/whl seqeval==1.2.2  # an sdist only
  python - <<'PY'
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from common.model.factory import resolve_base_model

src, dst = Path(resolve_base_model("")), Path(".gpu/minilm16")
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "README.md",
                                                       "data_config.json", ".gitattributes"))
weights = load_file(src / "model.safetensors")
save_file({k: v.half() for k, v in weights.items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
PY
  (cd "$data" && tar czf - sst2/train.tsv sst2/test.tsv conll2003/train.txt conll2003/test.txt \
    wnut17/train.conll ncbi_disease/train.tsv multi_domain_sentiment/multi_domain_sentiment.jsonl \
    sentiment_labelled_sentences/*.txt) > .gpu/datasets.tgz
  du -sh .gpu ;;
unpack)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl
  mkdir -p /tmp/ds && tar xzf .gpu/datasets.tgz -C /tmp/ds
  rm -rf /tmp/minilm && cp -r .gpu/minilm16 /tmp/minilm
  python3 -c "
from safetensors.torch import load_file, save_file
w = load_file('/tmp/minilm/model.safetensors')
save_file({k: v.float() for k, v in w.items()}, '/tmp/minilm/model.safetensors', metadata={'format': 'pt'})" ;;
esac
