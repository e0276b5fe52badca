# The CPU-sized char model with the modern recipe: same size and data as
# train_shakespeare_char_cpu.py, with rotary positions, RMSNorm, QK-norm, ReLU^2, untied embeddings,
# logit soft-capping, zero-init projections, Muon and a warmup-stable-decay schedule.
# python train.py config/train_shakespeare_char_cpu_modern.py

out_dir = "out-shakespeare-char-cpu-modern"
eval_interval = 250
eval_iters = 200
log_interval = 10

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

rotary = True
rmsnorm = True
qk_norm = True
relu2 = True
tie_embeddings = False
logit_softcap = 15.0
zero_init_proj = True

optimizer = "muon"
muon_lr = 0.02
learning_rate = 4e-3  # AdamW's part: embeddings, head, norm gains
lr_schedule = "wsd"
decay_fraction = 0.3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 0.0
beta2 = 0.99
warmup_iters = 50
device = "cpu"
