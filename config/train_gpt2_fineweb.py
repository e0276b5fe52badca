# GPT-2 (124M) on 10B tokens of FineWeb-Edu, build-nanogpt's recipe (Karpathy's "Let's reproduce GPT-2"
# video and repository, train_gpt2.py), which passes OpenAI's 124M on HellaSwag.
# python data/fineweb/prepare.py
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_fineweb.py

wandb_log = False  # set True (pip install wandb) to follow the run online
wandb_project = "fineweb"
wandb_run_name = "gpt2-124M-fineweb-edu-10B"
out_dir = "out-fineweb"
dataset = "fineweb"

# 64 sequences x 1024 tokens x 8 accumulation steps (1 per GPU on 8 GPUs) = 524,288 = 2**19 tokens a step,
# GPT-3's 0.5M batch for its 125M model; build-nanogpt's micro-batch is 64 too (an 80 GB GPU; lower
# batch_size and raise gradient_accumulation_steps by the same factor on a smaller one)
batch_size = 64
block_size = 1024
gradient_accumulation_steps = 8

# GPT-2 124M's shape with its biases, as build-nanogpt trains it
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True

# GPT-3's 125M rate, warmed up over its 375M tokens (375e6 / 2**19 = 715 steps), decayed (cosine) to a
# tenth; 19,073 steps x 2**19 tokens = 10B tokens, one pass over sample-10BT; weight decay 0.1
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 715
max_iters = 19073
lr_decay_iters = 19073
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

# build-nanogpt measures val loss (20 batches) and HellaSwag (all 10,042 validation items) every 250 steps
eval_interval = 250
eval_iters = 20
hellaswag_interval = 250
hellaswag_task = "hellaswag"
log_interval = 10
compile = True
