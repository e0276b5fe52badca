import re

import pytest
import torch

from helpers import REPO
from nanogpt.command_line import help_text, load_config
from nanogpt.config import TRAIN_KEYS, SampleSettings, TrainSettings
from nanogpt.errors import SettingError, run_main


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_file_then_overrides_apply_in_order(tmp_path):
    cfg_file = write(tmp_path, "batch_size = 32\nlearning_rate = 1e-3\nimport math\n_private = 1\n")
    cfg = load_config(TrainSettings, [cfg_file, "--batch_size=8", "--dataset=custom"])
    assert cfg.batch_size == 8  # the override comes after the file
    assert cfg.learning_rate == 1e-3
    assert cfg.dataset == "custom"
    assert cfg.n_layer == TrainSettings().n_layer  # untouched keys keep their defaults
    # later files win over earlier ones, and overrides before a file are overridden by it
    second = write(tmp_path, "batch_size = 4\n", "second.py")
    assert load_config(TrainSettings, ["--batch_size=2", cfg_file, second]).batch_size == 4


def test_int_is_accepted_for_float():
    cfg = load_config(TrainSettings, ["--dropout=0", "--learning_rate=1"])
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    assert isinstance(cfg.learning_rate, float)


def test_int_is_accepted_for_float_in_a_file(tmp_path):
    cfg = load_config(TrainSettings, [write(tmp_path, "dropout = 0\nmin_lr = 0\n")])
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)


@pytest.mark.parametrize("text,expected", [("True", True), ("False", False), ("true", True), ("0", False), ("1", True)])
def test_booleans(text, expected):
    assert load_config(TrainSettings, [f"--compile={text}"]).compile is expected
    assert load_config(TrainSettings, [f"--eval_only={text}"]).eval_only is expected


def test_optional_keys_take_none():
    assert load_config(TrainSettings, ["--compile=None"]).compile is None
    assert load_config(SampleSettings, ["--top_k=None"]).top_k is None
    assert load_config(SampleSettings, ["--top_k=5"]).top_k == 5


def test_strings_keep_their_text_and_drop_shell_quotes():
    assert load_config(SampleSettings, ["--start=ROMEO: 3 = x"]).start == "ROMEO: 3 = x"
    assert load_config(TrainSettings, ["--init_from='resume'"]).init_from == "resume"


@pytest.mark.parametrize(
    "arg,fragment",
    [
        ("--batch_size=abc", "--batch_size expects int, got 'abc'"),
        ("--batch_size=1.5", "--batch_size expects int"),
        ("--compile=maybe", "--compile expects bool or None"),
        ("--learning_rate=fast", "--learning_rate expects float"),
    ],
)
def test_ill_typed_overrides_are_errors(arg, fragment):
    with pytest.raises(SettingError, match=fragment.replace("?", r"\?")):
        load_config(TrainSettings, [arg])


def test_ill_typed_file_values_are_errors(tmp_path):
    with pytest.raises(SettingError, match="batch_size in .* must be int, got 'big'"):
        load_config(TrainSettings, [write(tmp_path, "batch_size = 'big'\n")])
    with pytest.raises(SettingError, match="max_iters .* must be int, got 5000.0"):
        load_config(TrainSettings, [write(tmp_path, "max_iters = 5000.0\n")])
    with pytest.raises(SettingError, match="bias .* must be bool"):
        load_config(TrainSettings, [write(tmp_path, "bias = 1\n")])


def test_unknown_keys_suggest_the_closest():
    with pytest.raises(SettingError, match="unknown config key 'learning_rat' .*did you mean learning_rate"):
        load_config(TrainSettings, ["--learning_rat=1e-3"])


def test_unknown_key_in_a_file(tmp_path):
    with pytest.raises(SettingError, match="unknown config key 'n_layers' in .*cfg.py; did you mean n_layer"):
        load_config(TrainSettings, [write(tmp_path, "n_layers = 4\n")])


def test_missing_config_file():
    with pytest.raises(SettingError, match="config file config/nope.py not found"):
        load_config(TrainSettings, ["config/nope.py"])


def test_broken_config_file(tmp_path):
    with pytest.raises(SettingError, match="could not be run: SyntaxError"):
        load_config(TrainSettings, [write(tmp_path, "batch_size = = 3\n")])


def test_override_without_value():
    with pytest.raises(SettingError, match="needs a value"):
        load_config(TrainSettings, ["--batch_size"])
    assert load_config(TrainSettings, ["--compile=False", "--compile"]).compile is True  # a switch alone is on


def test_help_lists_every_key_with_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as exit_info:  # the scripts' way out: --help is not an error
        run_main(lambda: load_config(TrainSettings, ["--help"]))
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed == help_text(TrainSettings, "train.py") + "\n"
    for name, value in vars(TrainSettings()).items():
        assert f"--{name}={value!r}" in printed
    assert "peak learning rate" in printed


def test_shipped_configs_load_and_pass_the_checks():
    for path in sorted((REPO / "config").glob("*.py")):
        load_config(TrainSettings, [str(path)])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("--batch_size=0", "batch_size must be at least 1, got 0"),
        ("--eval_iters=0", "eval_iters must be at least 1"),
        ("--gradient_accumulation_steps=-2", "gradient_accumulation_steps must be at least 1"),
        ("--learning_rate=nan", "learning_rate must be a finite number"),
        ("--grad_clip=inf", "grad_clip must be a finite number"),
        ("--beta2=1.0", "beta2 must be at least 0 and below 1, got 1.0"),
        ("--decay_fraction=1.5", "decay_fraction must be at least 0 and at most 1, got 1.5"),
        ("--dropout=nan", "dropout must be a finite number, got nan"),
        ("--backend=mpi", "unknown backend 'mpi'; use auto, nccl or gloo"),
        ("--out_dir=", "out_dir cannot be empty"),
        ("--max_iters=10000000000000000000", "max_iters is too large"),
    ],
)
def test_settings_that_cannot_work_are_refused_by_name(override, fragment):
    with pytest.raises(SettingError, match=re.escape(fragment)):
        load_config(TrainSettings, [override])


def test_a_training_config_serves_a_script_that_ignores_train_keys(tmp_path):
    import bench

    cfg = load_config(
        bench.BenchSettings,
        [write(tmp_path, "out_dir = 'x'\nlearning_rate = 1e-3\nn_layer = 3\nrotary = True\n")],
        ignored_keys=TRAIN_KEYS,
    )
    assert cfg.n_layer == 3 and cfg.rotary is True and not hasattr(cfg, "out_dir")
    with pytest.raises(SettingError, match="unknown config key 'n_layrs'"):  # a key of neither is still refused
        load_config(
            bench.BenchSettings,
            [write(tmp_path, "out_dir = 'x'\nn_layrs = 3\n")],
            ignored_keys=TRAIN_KEYS,
        )


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from nanogpt.files import write_atomically

    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def interrupted(f):
        f.write(b"new, half written")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically({target: interrupted}, 100)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_seeds_beyond_32_bits_draw_streams_of_their_own():
    from nanogpt.generation.sampling import mix32, stream_key, uniform_noise

    assert stream_key(1) == mix32(1) and stream_key(-5) == mix32(-5 & 0xFFFFFFFF)  # 32-bit seeds: as before
    keys = [stream_key(seed) for seed in (1, 2**32 + 1, 2**33 + 1, -(2**32) - 1)]
    assert len(set(keys)) == 4
    assert stream_key(torch.tensor([1, 2**32 + 1, -(2**32) - 1])).tolist() == [keys[0], keys[1], keys[3]]  # as a batch
    draws = [uniform_noise(torch.tensor([k]), torch.tensor([0]), 50) for k in keys[:2]]
    assert not torch.equal(draws[0], draws[1])
