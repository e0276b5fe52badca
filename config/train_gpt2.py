# GPT-2 (124M) on OpenWebText, as nanoGPT: 8 GPUs, ~4 days on A100s, val loss ~2.85.
# python data/openwebtext/prepare.py
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

wandb_log = False  # set True (pip install wandb) to follow the run online
wandb_project = "owt"
wandb_run_name = "gpt2-124M"
out_dir = "out"
dataset = "openwebtext"

# 12 sequences x 1024 tokens x 40 accumulation steps (5 per GPU on 8 GPUs) = 491,520 tokens per step,
# about GPT-2's 0.5M
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False

# 600,000 steps x 491,520 tokens = 295B tokens
learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1

eval_interval = 1000
eval_iters = 200
log_interval = 10
compile = True
