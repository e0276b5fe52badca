# Chat fine-tuning: teach a pretrained model to answer in turns (nanogpt/chat.py's template).
# python data/chat/prepare.py --input=conversations.jsonl && python train.py config/finetune_chat.py
# then talk to it: python sample.py --out_dir=out-chat --chat
# init_from may be a GPT-2 name, a Hugging Face folder (prepare with --vocab_from=FOLDER), or resume;
# --lora_rank=8 trains adapters instead of every weight.

out_dir = "out-chat"
eval_interval = 50
eval_iters = 20
log_interval = 10
wandb_log = False

dataset = "chat"  # data/chat/: the loss counts only the assistant's tokens
init_from = "gpt2"

# conversations are packed into windows that begin at a conversation's start (references/training.md)
batch_size = 8
block_size = 512
gradient_accumulation_steps = 4
max_iters = 600

# a small learning rate with a short warmup: the pretrained weights need a nudge, the new turn tokens more
learning_rate = 5e-5
warmup_iters = 30
lr_decay_iters = 600
min_lr = 5e-6
dropout = 0.0
