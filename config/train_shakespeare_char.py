# A small character-level model of tiny Shakespeare: 10.7M parameters, a few minutes on one GPU.
# python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char.py

out_dir = "out-shakespeare-char"
eval_interval = 500  # the model overfits on so little text: keep an eye on val loss
eval_iters = 200
log_interval = 10

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # 256 characters of context

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a small model can take a larger step
max_iters = 5000
lr_decay_iters = 5000  # usually max_iters
min_lr = 1e-4  # usually learning_rate / 10
beta2 = 0.99  # a little above 0.95 because each batch holds few tokens
warmup_iters = 100
