# Fine-tune OpenAI's GPT-2 on tiny Shakespeare (GPT-2 BPE tokens).
# python data/shakespeare/prepare.py && python train.py config/finetune_shakespeare.py
# init_from may be gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a folder saved with save_pretrained.

out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40
log_interval = 1
wandb_log = False

dataset = "shakespeare"
init_from = "gpt2-xl"  # the largest; use gpt2 (124M) on a small GPU or a CPU

# 1 sequence x 1024 tokens x 32 steps = 32,768 tokens per step; tiny Shakespeare is ~300K tokens,
# so one epoch is ~9 steps
batch_size = 1
block_size = 1024
gradient_accumulation_steps = 32
max_iters = 20

# a small, constant learning rate: the pretrained weights need only a nudge
learning_rate = 3e-5
decay_lr = False
dropout = 0.1
