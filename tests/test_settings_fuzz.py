"""No setting of any script ends in a traceback.

Each script reads its settings with one function, read_settings(argv), before it loads any data or
model. Hypothesis drives those functions in-process with settings drawn from the scripts' own config
dataclasses (so a new setting is fuzzed without anyone listing it): wrong types, empty text, 0,
negatives, NaN and infinities, huge numbers, paths that cannot be created, and several at once. Each
case must either be accepted or refused with a NanoGPTError naming a setting the case gave. Then a
few representative cases run end to end as real processes (tests/test_script_fuzz.py runs every
script's main on what is accepted).
"""

import dataclasses
import importlib.util
import math
import re
import sys
import typing

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import FUZZ_COUNTS, REPO, TINY_MODEL, assert_user_error, run_script
from nanogpt.generation.sampling import Sampling, row_values, sample_tokens
from nanogpt.training.lr_schedule import learning_rate
from nanogpt.errors import NanoGPTError


def script_module(path, checkout=REPO):
    """The script at `path` in `checkout` (the repo, or a copy whose folders it may write into)."""
    spec = importlib.util.spec_from_file_location("fuzzed_" + re.sub(r"\W", "_", path), checkout / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so that its functions pickle by name into worker processes (num_proc > 1)
    spec.loader.exec_module(module)  # the scripts run main() only under __main__
    return module


def settings_class(module):
    """The dataclass read_settings builds: the one config class the script defines or imports."""
    classes = {
        value
        for value in vars(module).values()
        if dataclasses.is_dataclass(value)
        and isinstance(value, type)
        and value.__name__.endswith(("Config", "Settings"))
        and value.__module__ != "nanogpt.model"
    }
    assert len(classes) == 1, classes
    return classes.pop()


SCRIPTS = ["train.py", "sample.py", "bench.py", "export.py", "serve.py", "eval.py", "compare.py"] + sorted(
    str(p.relative_to(REPO)) for p in REPO.glob("data/*/prepare.py")
)

# text a command line can carry (no NUL byte, no lone surrogate)
ARGV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
ODD_TEXT = st.sampled_from(
    [
        "",
        "None",
        "abc",
        "nan",
        "inf",
        "-inf",
        "-0",
        "0",
        "-1",
        "1e400",
        "1.5",
        "True",
        "false",
        "''",
        "'gpt2'",
        "99999999999999999999999999",
        "/proc/forbidden/x",
        "/dev/null/sub",
        "missing/file.txt",
        "cuda:7",
        "mps",
        "gpt2-huge",
        "best",
        "latest",
        " ",
        "\n",
        "\u00e9\u00e8",
        "FILE:/no/such/file",
    ]
)


def number_text(hint):
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
    if base is int:
        return st.integers(min_value=-(10**30), max_value=10**30).map(str)
    if base is float:
        return st.floats(allow_nan=True, allow_infinity=True).map(repr)
    return st.nothing()


def overrides(config_cls):
    """One to three --key=value overrides of this config's keys, values odd, random or of the key's type."""
    hints = typing.get_type_hints(config_cls)
    keys = sorted(hints)

    def value_for(key):
        return st.one_of(ODD_TEXT, ARGV_TEXT, number_text(hints[key]))

    return st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True).flatmap(
        lambda chosen: st.tuples(*[value_for(k).map(lambda v, k=k: f"--{k}={v}") for k in chosen])
    )


def train_schedule_works(module, cfg):
    """Accepted training settings give a finite learning rate at every point of the schedule train.py runs."""
    for it in (0, cfg.warmup_iters, cfg.lr_decay_iters, cfg.max_iters):
        assert math.isfinite(learning_rate(cfg, it)), (cfg, it)


def sampling_works(module, cfg):
    """Accepted sampling settings draw a valid token from random logits."""
    vocab = 65
    values = row_values([Sampling(cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed)], vocab, "cpu")
    token = sample_tokens(torch.randn(1, vocab), steps=torch.zeros(1, dtype=torch.long), **values)
    assert 0 <= token.item() < vocab


# what an accepted case must then survive: the first computations its settings feed
AFTER_ACCEPTED = {"train.py": train_schedule_works, "sample.py": sampling_works}
# settings that make a case meaningful for the other keys: export needs a target to get past its first check
BASE_ARGS = {
    "export.py": lambda tmp: [f"--to={tmp / 'exported'}"],
    "compare.py": lambda tmp: [str(tmp / "a"), str(tmp / "b")],
}
EXAMPLES = 250


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_setting_is_accepted_or_refused_by_name(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths the cases name land in a scratch folder
    module = script_module(script)
    config_cls = settings_class(module)
    base = BASE_ARGS.get(script, lambda tmp: [])(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    tried = []

    @settings(
        max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(overrides(config_cls))
    def case(argv):
        tried.append(argv)
        try:
            cfg = module.read_settings([*base, *argv])
        except NanoGPTError as e:
            message = str(e)
            assert "\n" not in message.strip(), message
            given = [arg[2:].split("=", 1)[0] for arg in [*base, *argv] if arg.startswith("--")]
            assert any(re.search(rf"\b{name}\b", message) for name in given), (
                f"{argv}: {message!r} names no setting it was given"
            )
            return
        if isinstance(cfg, tuple):  # compare.py: (the run folders, the settings)
            cfg = cfg[-1]
        assert isinstance(cfg, config_cls)
        if script in AFTER_ACCEPTED:
            AFTER_ACCEPTED[script](module, cfg)

    case()
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "reading settings must not create files"
    FUZZ_COUNTS[script] = len(tried)


def test_every_script_reads_its_settings_in_one_function():
    """A new script with settings joins the fuzzing above: each root script and prepare.py is listed."""
    with_settings = {p.name for p in REPO.glob("*.py") if "load_config(" in p.read_text()}
    assert with_settings <= set(SCRIPTS), with_settings - set(SCRIPTS)
    for script in SCRIPTS:
        assert hasattr(script_module(script), "read_settings"), script


# Representative cases end to end, as real processes: each ends with exit code 1 and one error line.
END_TO_END = [
    ("train.py", ["--batch_size=0"], "batch_size must be at least 1"),
    ("train.py", ["--learning_rate=nan"], "learning_rate must be a finite number"),
    ("train.py", ["--eval_iters=0"], "eval_iters must be at least 1"),
    ("train.py", ["--block_size=99999999999999999999"], "block_size is too large"),
    ("train.py", ["--n_embd=100", "--n_head=3"], "n_embd (100) must be divisible by n_head (3)"),
    ("train.py", ["--init_from=gpt2", "--block_size=2048"], "block_size 2048 is larger than the 1024 positions"),
    ("train.py", ["--optimizer=sgd"], "unknown optimizer 'sgd'; use adamw, muon or adafactor"),
    ("train.py", ["--optimizer=adafactor", "--beta1=0.8"], "beta1=0.8 is not used by optimizer='adafactor'"),
    (
        "train.py",
        ["config/train_shakespeare_char.py", "--optimizer=adafactor"],
        "drop it (one a config file sets too: --beta2=0.95)",
    ),
    ("train.py", ["--muon_lr=0.05"], "muon_lr=0.05 is not used by optimizer='adamw'"),
    ("train.py", ["--out_dir=/proc/forbidden/run"], "cannot create the folder /proc/forbidden/run (--out_dir"),
    ("train.py", ["--compile=maybe"], "--compile expects bool or None"),
    ("train.py", ["--attention=flash"], "attention='flash' picks among CUDA attention kernels; leave it 'auto' on cpu"),
    ("sample.py", ["--temperature=nan"], "temperature must be a finite number"),
    ("sample.py", ["--top_p=0"], "top_p must be above 0 and at most 1"),
    ("sample.py", ["--init_from=gpt2-huge"], "init_from 'gpt2-huge' is not a GPT-2 model"),
    ("bench.py", ["--iters=0"], "iters must be at least 1"),
    (
        "bench.py",
        ["--attention=cudnn", "--device=cpu"],
        "attention='cudnn' picks among CUDA attention kernels; leave it 'auto' on cpu",
    ),
    (
        "bench.py",
        ["config/train_gpt2.py", "--batch_sise=2"],
        "unknown config key 'batch_sise' in the command line; did you mean batch_size?",
    ),
    ("export.py", ["--checkpoint=newest", "--to=x"], "unknown checkpoint 'newest'; use best or latest"),
    (
        "data/shakespeare_char/prepare.py",
        ["--out_dir=/proc/forbidden"],
        "cannot create the folder /proc/forbidden (--out_dir",
    ),
    ("data/openwebtext/prepare.py", ["--val_fraction=1"], "val_fraction must be above 0 and below 1"),
    ("data/custom/prepare.py", ["--tokenizer=bpe2"], "unknown tokenizer 'bpe2'; use char, gpt2 or bpe"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, args, fragment", END_TO_END, ids=[" ".join([s, *a]) for s, a, _ in END_TO_END])
def test_bad_settings_end_to_end(script, args, fragment, data_dir):
    extra = [f"--data_dir={data_dir}", "--dataset=shakespeare_char", *TINY_MODEL] if script == "train.py" else []
    result = run_script(script, *extra, *args)
    assert result.returncode == 1
    assert_user_error(result, fragment)
