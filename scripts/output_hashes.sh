#!/usr/bin/env bash
# Run a fixed set of adapt commands on the tiny model (train with sample prompts from .txt and
# .toml, merge into single files/folders/.ckpt, blend, svd-merge, extract, resize, convert,
# generate, inspect, check) and print one digest per output file (scripts/output_digest.py).
# Bit-identical check of two commits: run at each with the SAME OUTDIR (paths are recorded in
# metadata) and diff the printed lists, e.g.
#   git checkout OLD && bash scripts/output_hashes.sh /tmp/o > old.txt
#   git checkout NEW && bash scripts/output_hashes.sh /tmp/o > new.txt && diff old.txt new.txt
set -euo pipefail
O="$1"
cd "$(dirname "$0")/.."
REPO="$PWD"
rm -rf "$O"; mkdir -p "$O"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
A=.venv/bin/adapt
.venv/bin/python - "$O" <<'PY'
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from adapters_core.models import write_tiny_model
from adapters_core.train.dataset import write_demo_dataset
o = Path(sys.argv[1])
write_tiny_model(o / "model", seed=0, single_file=o / "tiny.safetensors")
print(write_demo_dataset(o / "data", n_images=4, size=32, seed=0), file=open(o / "train_dir", "w"))
sd = load_file(o / "tiny.safetensors")
torch.save({"state_dict": sd, "global_step": 1}, o / "tiny.ckpt")
PY
printf '# c\nsks shape, red --n blurry --w 64 --h 64 --s 2 --d 5 --l 4\nsks shape --w 64 --h 64 --s 1 --ss euler_a --d 3\n' > "$O/samples.txt"
printf '[prompt]\nwidth = 64\nheight = 64\nsample_steps = 2\n[[prompt.subset]]\nprompt = "sks"\nseed = 4\nscale = 7\n' > "$O/samples.toml"
T="--pretrained_model_name_or_path $O/model --train_data_dir $(cat $O/train_dir) --caption_extension .txt --resolution 32 --max_train_steps 4 --learning_rate 1e-3 --seed 42 --max_data_loader_n_workers 0 --network_dim 4 --network_alpha 0"
$A -q train $T --output_dir "$O/t1" --output_name a --sample_prompts "$O/samples.txt" --sample_every_n_steps 2
$A -q train $T --output_dir "$O/t2" --output_name b --network_args conv_dim=2 conv_alpha=1 --sample_prompts "$O/samples.toml" --sample_every_n_steps 4
$A -q train $T --output_dir "$O/t3" --output_name c --save_model_as ckpt
L1="$O/t1/a.safetensors"; L2="$O/t2/b.safetensors"; L3="$O/t3/c.ckpt"
$A -q merge --sd_model "$O/tiny.safetensors" --models "$L1" "$L2" --ratios 0.7 0.5 --save_to "$O/merged.safetensors"
$A -q merge --sd_model "$O/tiny.ckpt" --models "$L1" --save_to "$O/merged2.safetensors"
$A -q merge --sd_model "$O/model" --models "$L3" --save_to "$O/merged3.ckpt"
$A -q merge --models "$L1" "$L3" --ratios 0.5 0.5 --save_to "$O/blend.safetensors"
$A -q svd-merge --models "$L1" "$L2" --ratios 1 -0.5 --new_rank 3 --save_to "$O/svd.safetensors"
$A -q extract --model_org "$O/tiny.safetensors" --model_tuned "$O/merged.safetensors" --dim 3 --conv_dim 2 --svd exact --save_to "$O/extracted.safetensors"
$A -q resize --model "$L2" --new_rank 2 --save_to "$O/resized.safetensors"
$A -q convert "$L1" "$O/conv_diffusers.safetensors" --to diffusers
$A -q convert "$L2" "$O/conv_peft" --to peft --model "$O/model"
printf 'a cat --n ugly --w 32 --h 32 --s 2 --d 1,2 --am 0.5\nsks --s 3 --l 5\n' > "$O/gen.txt"
$A -q generate --model "$O/model" --network_weights "$L1" --from_file "$O/gen.txt" --outdir "$O/gen" --seed 9 --width 32 --height 32
$A -q generate --model "$O/tiny.safetensors" --network_weights "$L2" --prompt "sks shape --s 2" --outdir "$O/gen2" --seed 1 --width 32 --height 32
$A inspect "$L1" > "$O/inspect1.txt"; $A inspect --json "$L3" > "$O/inspect3.json"
$A check --model "$O/model" "$L2" > "$O/check2.txt" || true
$A check --model "$O/tiny.ckpt" --json "$L1" > "$O/check1.json" || true
"$REPO/.venv/bin/python" "$REPO/scripts/output_digest.py" "$O"
