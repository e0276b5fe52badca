"""Chat: conversations prepared into ids and a loss mask, the loss on the assistant's tokens alone, a
fine-tune that learns a task its base cannot do (answer a word with it reversed, on words it never saw),
and the REPL and batch answers of sample.py --chat."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import fine_tune_chat
from helpers import (
    DDP_RUN,
    REPO,
    assert_same_training,
    assert_user_error,
    browser,
    held_out_accuracy,
    run_script,
    run_torchrun,
    start_server,
    stop_server,
    wait_until,
    write_conversations,
)
from nanogpt.chat import CHAT_TOKENS, END, prompt_within, render
from nanogpt.chat_data import prepare_chat, read_conversations
from nanogpt.data import Dataset
from nanogpt.errors import DataError
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import (
    GPT2_VOCAB_SIZE,
    CharTokenizer,
    GPT2Tokenizer,
    meta_from_hf_folder,
    tokenizer_from_meta,
    train_bpe,
    write_hf_tokenizer,
)

USER, ASSISTANT = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}


def line(*messages):
    return json.dumps({"messages": list(messages)})


BAD_FILES = {
    "not JSON": (line(USER, ASSISTANT) + '\n{"messages": [', "line 2 is not JSON"),
    "no messages": ('{"conversation": []}', 'line 1 has no "messages"'),
    "unknown role": (line({"role": "bot", "content": "x"}, ASSISTANT), 'message 1 has role "bot"'),
    "content a list": (line({"role": "user", "content": [{"type": "text"}]}, ASSISTANT), "not text"),
    "content a number": (line({"role": "user", "content": 3}, ASSISTANT), "message 1's content is 3, not text"),
    "no assistant turn": (line(USER), "no assistant turn"),
    "empty file": ("\n\n", "holds no conversations"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_conversation_file_is_one_sentence_naming_the_file_and_line(tmp_path, case):
    text, fragment = BAD_FILES[case]
    path = tmp_path / "chats.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=fragment) as refused:
        read_conversations(path)
    message = str(refused.value)
    assert str(path) in message and "\n" not in message, message


def test_not_utf8_and_a_missing_input_are_refused_by_prepare_in_one_line(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_bytes(line(USER, ASSISTANT).encode() + b"\n\xff\xfe")
    assert_user_error(run_script("data/chat/prepare.py", f"--input={path}", f"--out_dir={tmp_path}"), "not UTF-8")
    missing = tmp_path / "none.jsonl"
    assert_user_error(run_script("data/chat/prepare.py", f"--input={missing}", f"--out_dir={tmp_path}"), "not found")


def test_chat_tokens_come_after_the_vocabulary_and_no_text_encodes_to_them():
    gpt2 = GPT2Tokenizer(CHAT_TOKENS)
    assert sorted(gpt2.chat_ids.values()) == list(range(GPT2_VOCAB_SIZE, GPT2_VOCAB_SIZE + len(CHAT_TOKENS)))
    assert gpt2.vocab_size == GPT2_VOCAB_SIZE + len(CHAT_TOKENS)
    typed = gpt2.encode("<|user|>hi<|end|>")  # a user who types a marker gets its characters
    assert not set(typed) & set(gpt2.chat_ids.values()) and gpt2.decode(typed) == "<|user|>hi<|end|>"
    chars = CharTokenizer(list("<>|den"), CHAT_TOKENS)
    assert chars.chat_ids == {token: 6 + i for i, token in enumerate(CHAT_TOKENS)} and chars.vocab_size == 10
    assert chars.encode("<|end|>") == [0, 2, 4, 5, 3, 2, 1]  # its characters, not the marker


def test_the_mask_is_one_on_the_assistant_turns_and_their_end_marker_only():
    tok = CharTokenizer(list("abehiloy !"), CHAT_TOKENS)
    turns = [("system", "be"), ("user", "hi"), ("assistant", "hallo"), ("user", "bye"), ("assistant", "bye!")]
    ids, mask = render(tok, turns)
    said = [tok.decode([i]) for i, m in zip(ids, mask) if m]
    assert said == [*"hallo", END, *"bye!", END]
    assert tok.decode(ids) == "<|system|>be<|end|><|user|>hi<|end|><|assistant|>hallo<|end|><|user|>bye<|end|>" + (
        "<|assistant|>bye!<|end|>"
    )
    prompt, _ = render(tok, turns[:2], add_generation_prompt=True)
    assert tok.decode(prompt).endswith("<|user|>hi<|end|><|assistant|>")


def test_the_history_keeps_the_system_message_and_drops_the_oldest_turns():
    tok = CharTokenizer(list("abcdefgh"), CHAT_TOKENS)
    turns = [("system", "ab"), ("user", "cc"), ("assistant", "dd"), ("user", "ee"), ("assistant", "ff"), ("user", "g")]
    whole = prompt_within(tok, turns, 100)
    assert tok.decode(whole).startswith("<|system|>ab<|end|><|user|>cc")
    room = len(render(tok, [turns[0], *turns[3:]], add_generation_prompt=True)[0])
    kept = tok.decode(prompt_within(tok, turns, room))
    assert kept == "<|system|>ab<|end|><|user|>ee<|end|><|assistant|>ff<|end|><|user|>g<|end|><|assistant|>"
    assert prompt_within(tok, turns, 6) is None  # not even the system message and the last turn fit


def prepared_conversations(tmp_path, conversations, block_size=24):
    source = tmp_path / "chats.jsonl"
    source.write_text("\n".join(line(*c) for c in conversations) + "\n", encoding="utf-8")
    settings = dict(tokenizer="char", vocab_size=0, vocab_from="", val_fraction=0.25, seed=0)
    cfg = SimpleNamespace(input=str(source), block_size=block_size, **settings)
    prepare_chat(cfg, tmp_path / "chat")
    return Dataset(tmp_path, "chat")


def assistant_positions(ids, tokenizer):
    """Independently of the mask files: the targets inside an assistant turn (after <|assistant|>, up
    to and including <|end|>), read off the token ids themselves."""
    inside, said = False, []
    for token in ids:
        said.append(inside)
        if token == tokenizer.chat_ids["<|assistant|>"]:
            inside = True
        elif token == tokenizer.chat_ids[END]:
            inside = False
    return said


def test_the_loss_is_the_mean_over_assistant_targets_and_nothing_else_has_a_gradient(tmp_path):
    talk = [
        [{"role": "user", "content": f"word {w}"}, {"role": "assistant", "content": f"{w[::-1]} it is"}]
        for w in ("abc", "dog", "cat", "owl", "bee", "elk", "yak", "emu")
    ]
    talk.append([{"role": "system", "content": "be kind"}, *talk[0], {"role": "user", "content": "more"}, ASSISTANT])
    data = prepared_conversations(tmp_path, talk)
    tokenizer = CharTokenizer(data.meta["chars"], data.meta["chat_tokens"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=24, vocab_size=tokenizer.vocab_size))
    x, y = data.get_batch("train", 6, 24, "cpu", torch.Generator().manual_seed(0))
    logits_seen = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: logits_seen.append(output))
    _, loss = model(x, y)
    logits = logits_seen[0]
    logits.retain_grad()
    loss.backward()
    rows = torch.cat([x, y[:, -1:].clamp_min(0)], dim=1)  # y's last target is a real token or masked
    said = torch.tensor([assistant_positions(row.tolist(), tokenizer)[1:] for row in rows])
    said &= y >= 0  # a window's last target may be the first token of a turn cut at block_size
    assert said.any() and (~said).any()
    assert torch.equal(y >= 0, said)  # the masked targets are exactly those outside the assistant's turns
    picked = F.log_softmax(logits.float(), dim=-1).gather(2, y.clamp_min(0)[..., None])[..., 0]
    torch.testing.assert_close(loss, -picked[said].mean())
    assert logits.grad[~said].abs().max() == 0 and logits.grad[said].abs().max() > 0
    _, fused = model(x, y, fused_loss=True)
    torch.testing.assert_close(fused, loss, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_prepare_says_how_many_conversations_it_cut_and_skipped(tmp_path):
    chats = [[USER, {"role": "assistant", "content": "a short answer"}]] * 6
    chats += [[USER, {"role": "assistant", "content": "an answer far too long for the context " * 3}]]
    chats += [[{"role": "user", "content": "a question longer than the whole context " * 3}, ASSISTANT]]
    source = tmp_path / "chats.jsonl"
    source.write_text("\n".join(line(*c) for c in chats), encoding="utf-8")
    result = run_script(
        "data/chat/prepare.py", f"--input={source}", "--tokenizer=char", "--block_size=40", f"--out_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    assert "8 conversations" in result.stdout and "1 cut and 1 skipped at --block_size=40" in result.stdout


@pytest.mark.slow
def test_a_fine_tune_answers_held_out_words_that_its_base_could_not(chat_task, chat_run, tmp_path):
    task, questions = chat_task[0], chat_task[0] / "held_out.jsonl"
    # the same model before fine-tuning: its chat tokens added, no step taken (a learning rate of 0)
    before_dir, _ = fine_tune_chat(
        task, tmp_path / "before", "--learning_rate=0", "--min_lr=0", "--max_iters=1", "--eval_interval=1"
    )
    before = held_out_accuracy(before_dir, questions, tmp_path / "before.jsonl")
    after = held_out_accuracy(chat_run[0], questions, tmp_path / "after.jsonl")
    print(f"held-out reversals right: {before:.1%} before fine-tuning, {after:.1%} after")
    assert after >= 0.9 and before < 0.1


@pytest.mark.slow
def test_the_repl_streams_answers_keeps_the_history_and_takes_reset_and_exit(chat_run):
    typed = "abc\nxyz\n/reset\n\nqrs\n/exit\nnever read\n"
    result = subprocess.run(
        [
            sys.executable,
            "sample.py",
            f"--out_dir={chat_run[0]}",
            "--chat",
            "--device=cpu",
            "--temperature=0",
            "--max_new_tokens=8",
        ],
        cwd=REPO,
        input=typed,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answers = [part.strip() for part in result.stdout.split("> ") if part.strip()]
    assert answers == ["cba", "zyx", "(a new conversation)", "srq"], result.stdout
    assert "/reset starts a new conversation" in result.stderr


@pytest.mark.slow
def test_chat_refuses_a_model_without_the_template(trained_run, tmp_path):
    result = run_script("sample.py", f"--out_dir={trained_run[0]}", "--chat", "--device=cpu")
    assert_user_error(result, "has no chat template", "config/finetune_chat.py")
    questions = write_conversations(tmp_path / "q.jsonl", ["abc"], answered=False)
    assert_user_error(
        run_script("sample.py", f"--out_dir={trained_run[0]}", "--chat", f"--prompts={questions}", "--device=cpu"),
        "has no chat template",
    )


@pytest.mark.slow
def test_a_lora_chat_fine_tune_lowers_the_assistant_loss_and_answers(chat_task, tmp_path):
    out_dir, stdout = fine_tune_chat(chat_task[0], tmp_path / "lora", "--lora_rank=8", "--learning_rate=1e-2")
    evals = [json.loads(r) for r in open(out_dir / "metrics.jsonl") if json.loads(r)["kind"] == "eval"]
    first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
    assert last < 0.5 * first, (first, last)
    questions = chat_task[0] / "held_out.jsonl"
    accuracy = held_out_accuracy(out_dir, questions, tmp_path / "answers.jsonl")
    print(f"LoRA fine-tune: val loss {first:.3f} -> {last:.3f}, held-out reversals right {accuracy:.1%}")
    # its adapters alone lack the turn markers' rows; merged, it exports and chats as the checkpoint does
    alone = run_script("export.py", f"--out_dir={out_dir}", f"--to={tmp_path / 'adapters'}", "--adapters_only=True")
    assert_user_error(alone, "fine-tuned on conversations", "without --adapters_only")
    assert run_script("export.py", f"--out_dir={out_dir}", f"--to={tmp_path / 'merged'}").returncode == 0
    held_out_accuracy(out_dir, questions, tmp_path / "merged.jsonl", f"--init_from={tmp_path / 'merged'}")
    assert (tmp_path / "merged.jsonl").read_text() == (tmp_path / "answers.jsonl").read_text()


# -- the server: /v1/chat/completions through the openai client, and the page's chat mode ---------------


@pytest.fixture(scope="module")
def chat_server(chat_run, tmp_path_factory):
    process, base, log = start_server(chat_run[0], tmp_path_factory, "--max_rows=8")
    yield base
    stop_server(process, log)


@pytest.mark.slow
def test_the_openai_client_chats_plainly_and_streaming(chat_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=chat_server + "/v1", api_key="unused", max_retries=0, timeout=60)
    asked = [{"role": "user", "content": "dog"}]
    plain = client.chat.completions.create(model="m", messages=asked, temperature=0, logprobs=True, top_logprobs=2)
    choice = plain.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "god", "stop")
    assert plain.object == "chat.completion" and plain.usage.completion_tokens == 4  # g, o, d, <|end|>
    assert [t.token for t in choice.logprobs.content] == list("god") and len(
        choice.logprobs.content[0].top_logprobs
    ) == 2
    chunks = list(
        client.chat.completions.create(
            model="m", messages=asked, temperature=0, n=2, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    for index in (0, 1):
        deltas = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert deltas[0].delta.role == "assistant" and "".join(d.delta.content or "" for d in deltas) == "god"
        assert deltas[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 8
    limited = client.chat.completions.create(model="m", messages=asked, temperature=0, max_completion_tokens=2)
    assert (limited.choices[0].message.content, limited.choices[0].finish_reason) == ("go", "length")


BAD_CHATS = {
    "no messages": ({"model": "m"}, "messages is missing"),
    "empty messages": ({"messages": []}, "non-empty list"),
    "unknown role": ({"messages": [{"role": "bot", "content": "abc"}]}, 'role "bot"'),
    "content a list": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}, "not text"),
    "content a number": ({"messages": [{"role": "user", "content": 7}]}, "content is 7, not text"),
    "longer than the context": ({"messages": [{"role": "user", "content": "abc" * 20}]}, "longer than the model's"),
    "top_logprobs alone": ({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}, "needs logprobs"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_CHATS)
def test_a_bad_chat_request_gets_one_sentence(chat_server, case):
    httpx = pytest.importorskip("httpx")
    body, fragment = BAD_CHATS[case]
    response = httpx.post(chat_server + "/v1/chat/completions", json=body)
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and fragment in message and "\n" not in message, message


@pytest.mark.slow
def test_the_pages_chat_mode_in_a_real_browser(chat_server, tmp_path):
    """Two turns in Chromium: each answer streams in, the second request carries the first turn, and a
    new conversation starts empty."""
    openai = pytest.importorskip("openai")
    from selenium.webdriver.common.by import By

    with browser() as driver:
        driver.get(chat_server + "/")
        wait_until(lambda: driver.find_element(By.ID, "chat").is_selected())
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        for word in ("abc", "dog"):
            driver.find_element(By.ID, "prompt").send_keys(word)
            driver.find_element(By.ID, "generate").click()
            wait_until(lambda: driver.find_element(By.ID, "generate").is_enabled())
        turns = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#conversation .turn")]
        assert turns == ["abc", "cba", "dog", "god"], turns
        sent = driver.execute_script("return messages")
        assert [m["content"] for m in sent] == turns and driver.find_element(By.ID, "error").text == ""
        client = openai.OpenAI(base_url=chat_server + "/v1", api_key="unused", max_retries=0)
        again = client.chat.completions.create(model="m", messages=sent[:3], temperature=0)
        assert again.choices[0].message.content == "god"  # the second answer, given the first turn
        driver.save_screenshot(str(tmp_path / "chat.png"))
        driver.find_element(By.ID, "new_conversation").click()
        assert driver.find_elements(By.CSS_SELECTOR, "#conversation .turn") == []
        assert driver.execute_script("return messages") == []


# -- export: transformers chats with the exported folder --------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    # (no typed turn marker: a Jinja template renders text, and transformers' tokenizer then reads a
    # typed "<|end|>" as the marker, where ours keeps it as characters)
    {"role": "user", "content": "What is a  word, reversed? Say |end| too."},
    {"role": "assistant", "content": "drow a\nend"},
    {"role": "user", "content": "And 'naïve'?"},
]


@pytest.mark.parametrize("kind", ["gpt2", "bpe", "char"])
def test_apply_chat_template_of_the_exported_tokenizer_gives_our_ids(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    texts = [m["content"] for m in CONVERSATION]
    meta = {
        "gpt2": {"tokenizer": "gpt2"},
        "bpe": {"tokenizer": "bpe", "tokenizer_json": train_bpe(texts * 20, 300)},
        "char": {"tokenizer": "char", "chars": sorted(set("".join(texts)))},
    }[kind]
    meta["chat_tokens"] = CHAT_TOKENS
    ours = tokenizer_from_meta(meta)
    meta["vocab_size"] = ours.vocab_size
    transformers.GPT2Config(vocab_size=ours.vocab_size).save_pretrained(tmp_path)  # the folder's model type
    write_hf_tokenizer(meta, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = theirs.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    turns = [(m["role"], m["content"]) for m in CONVERSATION]
    assert ids == render(ours, turns, add_generation_prompt=True)[0]
    back = tokenizer_from_meta(meta_from_hf_folder(tmp_path))  # the folder's vocabulary, read back
    assert back.chat_ids == ours.chat_ids and back.vocab_size == ours.vocab_size
    assert back.encode(texts[1]) == ours.encode(texts[1])


@pytest.mark.slow
def test_transformers_greedy_answers_equal_ours_on_the_exported_folder(chat_task, chat_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "hf"
    result = run_script("export.py", f"--out_dir={chat_run[0]}", f"--to={folder}")
    assert result.returncode == 0, result.stderr
    questions = [json.loads(q) for q in open(chat_task[0] / "held_out.jsonl")][:30]
    write = tmp_path / "questions.jsonl"
    write.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    held_out_accuracy(chat_run[0], write, tmp_path / "ours.jsonl")
    ours = [json.loads(a)["messages"][-1]["content"] for a in open(tmp_path / "ours.jsonl")]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.GPT2LMHeadModel.from_pretrained(folder)
    theirs = []
    for question in questions:
        ids = tokenizer.apply_chat_template(question["messages"], add_generation_prompt=True, return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        out = model.generate(ids, max_new_tokens=8, do_sample=False)  # ends at <|end|>: the config's eos
        theirs.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    assert theirs == ours
    # and the folder chats in sample.py as the checkpoint does
    typed = subprocess.run(
        [sys.executable, "sample.py", f"--init_from={folder}", "--chat", "--device=cpu", "--temperature=0"],
        cwd=REPO,
        input=questions[0]["messages"][0]["content"] + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert typed.stdout.split("> ")[1].strip() == ours[0], typed.stderr


@pytest.mark.slow
def test_a_chat_run_resumes_exactly_matches_under_ddp_and_compares(chat_task, tmp_path):
    """What the loop does for any run holds for a chat run: 10 steps and a resume to 20 equal 20 at once;
    2 processes equal 1 with twice the accumulation (each draws its windows from conversation starts);
    compare.py draws them."""
    task = chat_task[0]
    args = [
        "train.py", "config/finetune_chat.py", *DDP_RUN, "--gradient_accumulation_steps=2",
        f"--init_from={task / 'hf'}", f"--data_dir={task}", "--dataset=chat",
    ]  # fmt: skip
    whole, resumed, ddp = tmp_path / "whole", tmp_path / "resumed", tmp_path / "ddp"
    assert run_script(*args, f"--out_dir={whole}").returncode == 0
    first = run_script(*args, f"--out_dir={resumed}", "--max_iters=10")
    assert first.returncode == 0, first.stderr
    second = run_script(*args, f"--out_dir={resumed}", "--init_from=resume")
    assert second.returncode == 0, second.stderr
    assert_same_training(whole, resumed)
    parallel = run_torchrun(*args, f"--out_dir={ddp}")
    assert parallel.returncode == 0, parallel.stderr
    assert_same_training(ddp, whole, key_bias=False)
    drawn = run_script("compare.py", whole, ddp, f"--to={tmp_path / 'compare.png'}")
    assert drawn.returncode == 0 and (tmp_path / "compare.png").stat().st_size > 10_000, drawn.stderr
