#!/usr/bin/env bash
# The twin's distance vs the step size h at a fixed time T = n·h (seed 000: O(h²) with the correction,
# O(h) without, docs/memory_theory.md), on the digits MLP with trainer.twin (conf/experiment/twin_distance.yaml),
# with mini-batches (64) and with the full training set as the batch (1146 examples: deterministic steps,
# the setting of the theory). Each lr runs exactly n = T/h steps, so every run ends at the same T.
#   scripts/twin_scaling.sh OUT_DIR [extra overrides...]       # then:
#   (SEEDS=0,1,...,9 and OPTIMIZERS="sgd lion" choose the seeds and the arms, defaults 0,1,2 and all three;
#   PAIRS="lr:steps ..." replaces the lrs below for every arm, BATCHES=1146 the batch sizes 64,1146)
#   python scripts/twin_distance.py --scaling OUT_DIR/* --out REPORT_DIR
# Small lrs in factors of 2 (the tuned ones are far outside the regime h·β/(1−β)²·λ_max ≪ 1):
#   sgd (momentum 0.9): h = 2.5e-4 ... 2e-3, T = 0.25 (as scripts/twin_trajectory.py's heavy-ball β = 0.9 case);
#   adamw_beta2_0.99 and lion: h = 2.5e-5 ... 2e-4, T = 0.025.
set -euo pipefail
out=${1:?usage: scripts/twin_scaling.sh OUT_DIR [extra overrides...]}
shift
extra=("$@")
memexp=${MEMEXP:-memexp}
seeds=${SEEDS:-0,1,2}
optimizers=${OPTIMIZERS:-sgd adamw_beta2_0.99 lion}
batches=${BATCHES:-64,1146}
run() {  # optimizer, lr, steps
  "$memexp" train -m experiment=twin_distance size=tiny logger=none trainer.progress=off \
    optimizer="$1" optimizer.lr="$2" trainer.max_steps="$3" trainer.log_every=5 trainer.eval_every="$3" \
    trainer.batch_size="$batches" seed="$seeds" hydra.sweep.dir="$out/$1_lr$2" "${extra[@]}" > /dev/null
}
for optimizer in $optimizers; do
  if [ "$optimizer" = sgd ]; then pairs="2.5e-4:1000 5e-4:500 1e-3:250 2e-3:125"; else pairs="2.5e-5:1000 5e-5:500 1e-4:250 2e-4:125"; fi
  pairs=${PAIRS:-$pairs}
  for pair in $pairs; do run "$optimizer" "${pair%%:*}" "${pair##*:}"; done
done
