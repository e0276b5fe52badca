# The spec's char-level model (6 layers, 6 heads, 384 wide, block 256) with the modern recipe:
# rotary positions, RMSNorm, QK-norm, ReLU^2, untied embeddings, logit soft-capping, zero-init
# projections, Muon for the blocks' matrices and a warmup-stable-decay schedule.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_modern.py

out_dir = "out-shakespeare-char-modern"
eval_interval = 250
eval_iters = 200
log_interval = 10

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

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
max_iters = 2500  # the classic config's best val loss comes at ~1500 of its 5000 steps
lr_decay_iters = 2500
min_lr = 0.0
beta2 = 0.99
warmup_iters = 100
