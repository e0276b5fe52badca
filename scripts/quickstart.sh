#!/usr/bin/env bash
# Install, prepare tiny Shakespeare, train the CPU-sized model (a few minutes) and print a sample.
source "$(dirname "$0")/setup_env.sh"
python data/shakespeare_char/prepare.py
python train.py config/train_shakespeare_char_cpu.py --overwrite=True
python sample.py --out_dir=out-shakespeare-char-cpu --num_samples=1 --max_new_tokens=500
