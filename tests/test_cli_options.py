"""``decinv invert --option NAME=VALUE`` and ``--schedule``: the methods' options on the command line, and
``--method auto`` refusing them with the flags of the anderson run it is."""

import argparse
import json
import shlex

import numpy as np
import pytest
import torch
from cli_runs import run_invert
from PIL import Image

from decinv_fast import invert
from decinv_fast.cli import load_vae, main
from decinv_fast.cli_args import method_options, option_arg
from decinv_fast.cli_io import UsageError
from decinv_fast.options import auto_kwargs


@pytest.mark.parametrize("spec,pair", [
    ("memory=8", ("memory", 8)), ("mixing=pixel", ("mixing", "pixel")), ("safeguard=False", ("safeguard", False)),
    ("mean_gain=2.5", ("mean_gain", 2.5)), ("eps=1e-6", ("eps", 1e-6)), (" betas = 0.9, 0.99", ("betas", (0.9, 0.99))),
    ("mixing=a,b", ("mixing", "a,b")),  # not numbers: left as text, for invert to refuse
])
def test_an_option_value_reads_as_a_bool_int_number_numbers_or_text(spec, pair):
    name, value = option_arg(spec)
    assert (name, value) == pair and type(value) is type(pair[1])


@pytest.mark.parametrize("spec,message", [
    ("memory", "not NAME=VALUE"), ("=3", "not NAME=VALUE"), ("memory=", "not NAME=VALUE"), ("9x=1", "not NAME=VALUE"),
    ("clip_aware=true", "clip_aware has a flag of its own: --clip-aware"),
    ("rho=0.5", "rho has a flag of its own: --lr"), ("optimizer=lbfgs", "--lbfgs"),
    ("steps=4", "steps is no method option \\(those are alpha, betas, eps, first_frame_gain, first_frame_join, "
                "first_frame_steps, frame_weights, mean_gain, mean_gain_clipped, memory, mixing, residual_blur, "
                "safeguard, second_frame_steps\\)"),
    ("foo=1", "foo is no method option"),
])
def test_a_malformed_option_is_argparse_s_error(spec, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        option_arg(spec)


def test_an_option_given_twice_is_refused_with_both_values():
    assert method_options([("memory", 3), ("mixing", "pixel")]) == {"memory": 3, "mixing": "pixel"}
    assert method_options(None) == {}
    with pytest.raises(UsageError, match=r"--option memory is given twice \(3 and 4\)"):
        method_options([("memory", 3), ("memory", 4)])


def _photo(photo_png):
    return load_vae("fixture", torch.float32, "cpu"), np.asarray(Image.open(photo_png))


def test_options_and_the_schedule_reach_invert_and_the_metadata(tmp_path, photo_png):
    latents, meta = run_invert(photo_png, tmp_path / "z.st", "--method", "anderson", "--option", "memory=2",
                               "--option", "mixing=pixel", "--option", "mean_gain=2", "--schedule", "constant",
                               "--steps", "3")
    vae, image = _photo(photo_png)
    given = dict(memory=2, mixing="pixel", mean_gain=2)
    assert torch.equal(latents, invert(vae, image, method="anderson", steps=3, schedule="constant", **given).latents)
    assert not torch.equal(latents, invert(vae, image, method="anderson", steps=3, **given).latents)  # paper's
    assert json.loads(meta["options"]) == given and meta["schedule"] == "constant"
    plain, plain_meta = run_invert(photo_png, tmp_path / "p.st", "--steps", "2")
    assert (plain_meta["options"], plain_meta["schedule"]) == ("{}", "None")
    betas = run_invert(photo_png, tmp_path / "b.st", "--option", "betas=0.5,0.9", "--steps", "2")[0]
    assert torch.equal(betas, invert(vae, image, steps=2, betas=(0.5, 0.9)).latents)
    assert not torch.equal(betas, plain)  # adam took them (its second step depends on them)


@pytest.mark.parametrize("flags,message", [
    (["--method", "anderson", "--option", "memory=x"], "memory (Anderson history m) must be an int >= 0, got 'x'"),
    (["--method", "km", "--option", "alpha=1.5"], "alpha (KM inertia) must be a number in [0, 1), got 1.5"),
    (["--method", "grad", "--option", "memory=3"], "memory is an option of grad's --lbfgs (the number of"),
])
def test_a_bad_option_is_invert_s_error_in_the_flags_spelling(photo_png, tmp_path, capsys, flags, message):
    assert main(["invert", str(photo_png), "--steps", "1", "--out", str(tmp_path / "z.st"), *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("method,takes", [
    ("fsm", "first_frame_gain, first_frame_join, first_frame_steps, mean_gain, mean_gain_clipped, residual_blur, "
            "second_frame_steps"),
    ("adam", "betas, eps, first_frame_join, first_frame_steps, residual_blur, second_frame_steps"),
    ("grad", "memory"),
])
def test_an_option_the_method_does_not_take_is_refused_before_anything_loads(tmp_path, capsys, method, takes):
    missing = tmp_path / "no_such_image.png"  # not read: the option is refused first
    assert main(["invert", str(missing), "--out", str(tmp_path / "z.st"), "--method", method,
                 "--option", "memory=3", "--option", "alpha=0.2"]) == 2
    err = capsys.readouterr().err
    named = "['alpha']" if method == "grad" else "['alpha', 'memory']"
    assert f"unknown --option name(s) {named} for --method {method}; it takes: {takes}\n" in err


def _refused(photo_png, tmp_path, capsys, *flags) -> tuple[str, list[str]]:
    """``--method auto`` with ``flags``: the error, and the flags it says to run instead."""
    assert main(["invert", str(photo_png), "--steps", "3", "--out", str(tmp_path / "z.st"), "--method", "auto",
                 *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decinv: error: --method auto chooses its own step size, schedule and options")
    assert not (tmp_path / "z.st").exists()
    return err, shlex.split(err.split("run the anderson method it is: ")[1])


def test_auto_refuses_a_setting_and_spells_out_the_anderson_run_with_it_replaced(photo_png, tmp_path, capsys):
    err, flags = _refused(photo_png, tmp_path, capsys, "--lr", "0.5", "--option", "memory=2", "--patience", "2")
    assert "(got --lr 0.5 --option memory=2)" in err
    latents = run_invert(photo_png, tmp_path / "a.st", "--steps", "3", *flags)[0]
    vae, image = _photo(photo_png)
    direct = invert(vae, image, steps=3, **auto_kwargs(lr=0.5, memory=2, patience=2))
    assert torch.equal(latents, direct.latents)
    err, flags = _refused(photo_png, tmp_path, capsys, "--option", "safeguard=false", "--option", "mean_gain=2,3")
    assert "(got --option safeguard=false --option mean_gain=2,3)" in err  # as they were typed
    assert "mean_gain=2,3" in flags and "safeguard=false" in flags


def test_auto_s_spelled_out_run_is_auto(photo_png, tmp_path, capsys):
    """With an option auto has anyway, the flags it spells out run auto itself, to the bit; its own schedule is
    no change, as in ``invert``."""
    err, flags = _refused(photo_png, tmp_path, capsys, "--option", "memory=5", "--schedule", "constant")
    assert "(got --option memory=5)" in err
    assert flags[:2] == ["--method", "anderson"] and "--clip-aware" in flags and "--keep-best" in flags
    spelled = run_invert(photo_png, tmp_path / "a.st", "--steps", "3", *flags)[0]
    auto = run_invert(photo_png, tmp_path / "b.st", "--steps", "3", "--method", "auto", "--schedule", "constant")[0]
    assert torch.equal(spelled, auto)
    _refused(photo_png, tmp_path, capsys, "--schedule", "paper")
