# Fine-tune OpenAI's GPT-2 XL on tiny Shakespeare with LoRA: the run that fits a 24 GB GPU.
# python data/shakespeare/prepare.py && python train.py config/finetune_shakespeare_lora.py
# The weights stay frozen (in bf16 on a GPU); rank-16 adapters on every attention and MLP matrix train,
# 19.7M parameters, 1.3% of gpt2-xl's. train.py prints its memory plan first (references/training.md, "Memory").

out_dir = "out-shakespeare-lora"
eval_interval = 5
eval_iters = 40
log_interval = 1
wandb_log = False

dataset = "shakespeare"
init_from = "gpt2-xl"

# as config/finetune_shakespeare.py: 1 sequence x 1024 tokens x 32 steps = 32,768 tokens per step
batch_size = 1
block_size = 1024
gradient_accumulation_steps = 32
max_iters = 20

lora_rank = 16
lora_alpha = 32.0  # the adapters' output scaled by alpha / rank = 2
lora_targets = "both"
lora_dropout = 0.05
dropout = 0.0  # the frozen model's own dropout; the adapters have theirs

# the adapters start at zero: they take a higher rate than a full fine-tune's 3e-5
learning_rate = 3e-4
decay_lr = False
weight_decay = 0.0
