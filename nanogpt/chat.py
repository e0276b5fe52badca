"""Conversations, and the one chat template every stage renders them with.

A conversation is OpenAI's list of messages, [{"role": "system" | "user" | "assistant", "content": "..."}],
and becomes tokens as

    <|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>

each turn its role's token, its content encoded as plain text, then <|end|>. The four are special tokens
(ids after the vocabulary, nanogpt/tokenizer.py), so no text a user types can open or close a turn. A model
answers after <|assistant|> and ends its turn with <|end|>. Training counts the loss on what the model should
say, an assistant turn's content and its <|end|>: the mask is 1 there and 0 elsewhere. prepare (tokens and
mask, nanogpt/chat_data.py), sample.py --chat, serve.py's /v1/chat/completions and export.py (as a Jinja
chat_template for transformers) all render through here.
"""

import json

from nanogpt.errors import DataError

ROLES = ("system", "user", "assistant")
END = "<|end|>"
CHAT_TOKENS = [f"<|{role}|>" for role in ROLES] + [END]  # their order is their ids' order
# the same rendering for transformers' apply_chat_template (export.py writes it as the tokenizer's chat_template)
JINJA_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def has_template(tokenizer):
    """Whether the tokenizer has the chat tokens: a model fine-tuned on conversations (data/chat)."""
    return set(CHAT_TOKENS) <= getattr(tokenizer, "chat_ids", {}).keys()


def end_of_turn(tokenizer):
    return tokenizer.chat_ids[END]


def check_messages(messages, need_answer=False):
    """The messages as (role, content) pairs, or a DataError saying in one sentence what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise DataError('messages must be a non-empty list of {"role": ..., "content": ...} objects')
    turns = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            raise DataError(f"message {number} has role {json.dumps(role)}; use one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise DataError(
                f"message {number}'s content is {json.dumps(message.get('content'))[:40]}, not text; send the"
                " content as a string"
            )
        turns.append((message["role"], message["content"]))
    if need_answer and not any(role == "assistant" for role, _ in turns):
        raise DataError("the conversation has no assistant turn, so nothing to learn from; add the answer")
    return turns


def render(tokenizer, turns, add_generation_prompt=False):
    """(ids, mask) of (role, content) turns: mask 1 on the assistant turns' content and <|end|>. With
    add_generation_prompt the ids end with <|assistant|>, where the model's answer begins."""
    ids, mask = [], []
    for role, content in turns:
        turn = [tokenizer.chat_ids[f"<|{role}|>"], *tokenizer.encode(content, ordinary=True), end_of_turn(tokenizer)]
        ids += turn
        mask += [0] + [int(role == "assistant")] * (len(turn) - 1)
    if add_generation_prompt:
        ids.append(tokenizer.chat_ids["<|assistant|>"])
        mask.append(0)
    return ids, mask


def no_template(model):
    """What to say of a model without the chat tokens (sample.py --chat, serve.py's chat endpoint)."""
    return (
        f"{model} has no chat template: it was not fine-tuned on conversations; fine-tune it first (python "
        "data/chat/prepare.py --input=FILE.jsonl, then python train.py config/finetune_chat.py)"
    )


def prompt_room(block_size, max_new_tokens):
    """How many tokens of the context a chat prompt may fill: all but the room to answer, at most half."""
    return block_size - min(max_new_tokens, block_size // 2)


def prompt_within(tokenizer, turns, room):
    """The ids asking for the next answer, from as many of the latest turns as fit in `room` tokens:
    the oldest turns go first, a system message never. None if even the last turn does not fit."""
    system = [t for t in turns[:1] if t[0] == "system"]
    rest = turns[len(system) :]
    for first in range(len(rest)):
        ids, _ = render(tokenizer, system + rest[first:], add_generation_prompt=True)
        if len(ids) <= room:
            return ids
    return None
