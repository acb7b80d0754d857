#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md, in one command on a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_rows.sh recipe|federated|warm OUT_DIR [DATASETS_DIR] [BASE_MODEL]
#
# recipe:    the CUDA tests, the encoder-recipe grid (SST-2, 4,000 sentences, centralized) and
#            the centralized non-private references on all SST-2 training sentences.
# federated: SST-2, all training sentences, K = 10 partners (Dirichlet α = 1), pooled-lora with
#            FFA-LoRA, federated DP at ε = 8, 3, 1 and without DP, no update clip (on
#            2026-11-30 every update, norm 9–19, was cut to 10). (pooled-head at ε = 8 on all
#            sentences is measured on the CPU: BENCHMARKS.md, "All 60,614 sentences on this box".)
# warm:      issue 32's rows with a warm start on public data (benchmarks.warm_start): CoNLL-2003
#            (K = 3) with DP-BiTFiT (8 local epochs) and FFA-LoRA in every layer of the warm
#            encoder at ε = 8 and its non-private reference (warm start + full
#            fine-tuning); SST-2 on all training sentences (K = 10)
#            with pooled-head at ε = 8 and 3 on the warm and on the plain encoder side by side, the
#            reference, and FFA-LoRA on the warm encoder. DEADLINE (seconds, default 1500) bounds
#            the whole part: each step gets at most what is left. Measured on an H200
#            (2026-12-04): a CoNLL round ≈ 100 s (training 14 s per partner, evaluation ≈ 50 s),
#            a full-size SST-2 pooled-head round ≈ 60 s (≈ 6 s of set-up per partner): the part
#            needs ≈ 25 minutes, more than one session's 15: run it in two sessions
#            (STEPS=conll, STEPS=sst2).
# Each step has its own time limit, and a step that fails does not stop the next; results go to
# OUT_DIR as they are measured.
set -u
part=${1:?recipe or federated}
out=${2:?output directory}
data=${3:-../shared/datasets}
model=${4:-}
work=$(mktemp -d)  # run directories and CSVs: only the results go to OUT_DIR
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SST2_DIR="$data/sst2"
py=${PYTHON:-python3}
n_all=${TRAIN:-$(($(wc -l < "$data/sst2/train.tsv") - 1))}  # TRAIN, GRID_N: smaller, for a dry run
deadline=${DEADLINE:-1500}
step() {  # step SECONDS NAME COMMAND...: run one step under a time limit, log its status
  local limit=$1 name=$2; shift 2
  local t0=$SECONDS left=$((deadline - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then echo "$name: skipped, no time left" | tee -a "$out/steps.txt"; return; fi
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
}
if [ "$part" = recipe ]; then
  step 60 cuda_tests "$py" -m pytest tests/test_device.py -q -n 0 -p no:randomly
  step 180 encoder_grid "$py" -m benchmarks.encoder_recipe --preset grid --device auto \
    --train-examples "${GRID_N:-4000}" \
    --base-model "$model" --out "$out/encoder_grid.json"
  for ref in full:5e-5 pooled-lora:5e-4 lora:5e-4; do  # mode:learning rate, batch 32, 1 epoch
    step 105 "reference_${ref%%:*}" "$py" -m benchmarks.utility --dataset sst2 \
      --datasets-dir "$data" --train-examples "$n_all" --finetune "${ref%%:*}" --settings central \
      --epsilons inf --update-clip-norm 0 --learning-rate "${ref##*:}" --rounds 1 \
      --base-model "$model" --out "$work"
    cp "$work/utility.json" "$out/utility_references.json" 2>/dev/null
  done
elif [ "$part" = warm ]; then
  base=${model:+--base-model "$model"}
  ws=("$py" -m benchmarks.warm_start --datasets-dir "$data" ${model:+--from-model "$model"})
  keep() {  # keep DIR NAME: the arms' JSON and the warm start's lineage
    cp "$1/utility.json" "$out/$2.json" 2>/dev/null
    for f in "$1"/base-*/warm_start.json; do [ -f "$f" ] && cp "$f" "$out/$2.warm_start.json"; done
  }
  if [ "${STEPS:-conll}" != sst2 ]; then
  step 60 ws_conll "${ws[@]}" --row conll2003 --out "$work/conll" --warm-start-only
  # DP-BiTFiT at 8 local epochs and lr 5e-3 (CPU: 0.711; 1e-2 fell to 0.693). The best CPU arm,
  # 16 local epochs at 3e-3 (0.715), needs about twice this step's limit.
  step 330 conll_warm_bitfit "${ws[@]}" --row conll2003 --base "$work/conll/base-conll2003" \
    --out "$work/conll_bitfit" --finetune bias --settings federated --epsilons 8 \
    --learning-rate 5e-3 --update-clip-norm 0 --local-epochs 8
  keep "$work/conll_bitfit" conll_warm_bitfit
  step 330 conll_warm_ffa "${ws[@]}" --row conll2003 --out "$work/conll" --finetune lora --lora-freeze-a \
    --settings federated --epsilons 8 --learning-rate 2e-2 --update-clip-norm 0 --local-epochs 4
  keep "$work/conll" conll_warm_ffa
  step 60 conll_warm_reference "${ws[@]}" --row conll2003 --out "$work/conll_ref" --base \
    "$work/conll/base-conll2003" --finetune full --settings central --epsilons inf \
    --update-clip-norm 0 --learning-rate 5e-5 --rounds 1
  keep "$work/conll_ref" conll_warm_reference
  fi
  if [ "${STEPS:-sst2}" != conll ]; then
  step 60 ws_sst2 "${ws[@]}" --row sst2 --out "$work/sst2" --warm-start-only
  step 240 sst2_warm_head "${ws[@]}" --row sst2 --out "$work/sst2" --train-examples "$n_all" \
    --finetune pooled-head --settings federated --epsilons 8 3
  keep "$work/sst2" sst2_warm_head
  step 240 sst2_plain_head "$py" -m benchmarks.utility --dataset sst2 --datasets-dir "$data" \
    --train-examples "$n_all" --finetune pooled-head --settings federated --epsilons 8 3 \
    $base --out "$work/sst2_plain"
  keep "$work/sst2_plain" sst2_plain_head
  step 60 sst2_warm_reference "${ws[@]}" --row sst2 --out "$work/sst2_ref" --base "$work/sst2/base-sst2" \
    --train-examples "$n_all" --finetune full --settings central --epsilons inf \
    --update-clip-norm 0 --learning-rate 5e-5 --rounds 1
  keep "$work/sst2_ref" sst2_warm_reference
  step 240 sst2_warm_ffa "${ws[@]}" --row sst2 --out "$work/sst2_ffa" --base "$work/sst2/base-sst2" \
    --train-examples "$n_all" --finetune pooled-lora --lora-freeze-a --settings federated \
    --epsilons 8 --update-clip-norm 0
  keep "$work/sst2_ffa" sst2_warm_ffa
  fi
else
  step 460 federated "$py" -m benchmarks.utility --dataset sst2 --datasets-dir "$data" \
    --train-examples "$n_all" --finetune pooled-lora --lora-freeze-a --settings federated \
    --epsilons 8 3 inf 1 --update-clip-norm 0 --base-model "$model" --out "$work"
  cp "$work/utility.json" "$out/utility_federated.json" 2>/dev/null
fi
rm -rf "$work"
