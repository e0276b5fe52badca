# GPT-2 (124M) with the modern recipe, sized like the GPT-2 speedrun (github.com/KellerJordan/modded-nanogpt)
# of late 2024, whose 124M model matched llm.c's GPT-2 val loss (3.28 on FineWeb) in 1.7B tokens, then
# in under 1B: rotary, RMSNorm, QK-norm, ReLU^2, untied head, soft-capped logits, zero-init projections,
# Muon for the blocks' matrices, a warmup-stable-decay schedule.
# python data/openwebtext/prepare.py
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_modern.py
# (Its step time is measured against config/train_gpt2.py's by bench/gpu_train.sh, on random tokens:
# no corpus of this size reaches the test GPU, so no loss is claimed for it here.)

wandb_log = False
wandb_project = "owt"
wandb_run_name = "gpt2-124M-modern"
out_dir = "out-gpt2-modern"
dataset = "openwebtext"

# the speedrun's batch: 8 x 64 sequences x 1024 tokens = 524,288 tokens per step; here 16 sequences a
# micro-batch, 32 micro-batches (4 per GPU on 8 GPUs)
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 4 * 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False

rotary = True
rmsnorm = True
qk_norm = True
relu2 = True
tie_embeddings = False
logit_softcap = 30.0  # the speedrun's 30 * tanh(logits / 30)
zero_init_proj = True

# 1,907 steps x 524,288 tokens = 1.0B tokens. The speedrun's records of that time ran 3,242 steps with
# no warmup and a linear decay over the last 926 (29%), learning_rate 0.0036 for the AdamW part and no
# weight decay. Muon at lr 0.02, momentum 0.95: the defaults of Keller Jordan's Muon for the lr scaling
# used here ("original"). Starting points to tune, not tuned values.
optimizer = "muon"
muon_lr = 0.02
learning_rate = 0.0036
weight_decay = 0.0
lr_schedule = "wsd"
decay_fraction = 0.3
warmup_iters = 0
max_iters = 1907
lr_decay_iters = 1907
min_lr = 0.0

eval_interval = 250
eval_iters = 200
log_interval = 10
compile = True
