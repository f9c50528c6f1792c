"""``decinv invert``'s arguments: their defaults, the devices and VAE folders it takes, the output folders it
refuses, and what the metadata says of a plain run."""

import argparse
import inspect
import json
import re

import pytest
import torch
from cli_runs import run_invert

from decinv_fast import cli, cli_io, invert
from decinv_fast.cli import build_parser, device_arg, load_vae, main


def test_the_defaults_are_invert_s():
    args = build_parser().parse_args(["invert", "photo.png"])
    defaults = {k: p.default for k, p in inspect.signature(invert).parameters.items()}
    assert (args.method, args.steps, args.lr, args.chunk_frames) == tuple(
        defaults[k] for k in ("method", "steps", "lr", "chunk_frames"))
    assert cli.DTYPES[args.dtype] == torch.float32 and args.attention == defaults["attention"]


def test_help_shows_the_defaults_but_never_none(capsys):
    """A default of None means "not given": ``--help`` says what that means instead of "(default: None)"."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["invert", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: 50)" in text and "(default: adam)" in text and "(default: latents.safetensors)" in text
    assert "None" not in text
    assert "default: the method's: 0.01 for adam" in text and "below TOL (default: never)" in text


def test_a_plain_run_records_its_unevaluated_last_iterate(tmp_path, photo_png):
    """Adam returns the last update's result, which no step evaluated: its residual is "-", its step the
    number of steps, and the optimizer field says the method has none of grad's."""
    meta = run_invert(photo_png, tmp_path / "z.st", "--steps", "2")[1]
    assert (meta["returned_step"], meta["returned_residual"], meta["stop_reason"]) == ("2", "-", "steps")
    assert meta["optimizer"] == "none"
    assert run_invert(photo_png, tmp_path / "g.st", "--method", "grad")[1]["optimizer"] == "adam"


def test_a_cuda_index_past_the_machine_s_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [device_arg(d) for d in ("cuda", "cuda:0", "cuda:1")] == ["cuda", "cuda:0", "cuda:1"]
    with pytest.raises(argparse.ArgumentTypeError, match="cuda:2: this machine has 2 CUDA device"):
        device_arg("cuda:2")


def test_a_pipeline_folder_loads_its_vae_subfolder(tmp_path):
    vae = load_vae("fixture", torch.float32, "cpu")
    vae.save_pretrained(tmp_path / "pipeline" / "vae")
    loaded = load_vae(str(tmp_path / "pipeline"), torch.float32, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values(),
                                                 strict=True))


def test_a_folder_of_another_model_class_is_one_line(tmp_path, photo_png, capsys):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert main(["invert", str(photo_png), "--vae", str(tmp_path / "unet"), "--quiet",
                 "--out", str(tmp_path / "z.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert "class 'UNet2DModel' is not one of" in err and "\n" not in err


def test_an_unwritable_output_folder_is_one_line(tmp_path, photo_png, capsys, monkeypatch):
    """Checked before the run (root may write anywhere, so the folder's permission is what is faked)."""
    monkeypatch.setattr(cli_io.os, "access", lambda path, mode: False)
    assert main(["invert", str(photo_png), "--quiet", "--out", str(tmp_path / "z.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"decinv: error: --out {tmp_path / 'z.st'}: folder {tmp_path} is not writable"


class _Stderr:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("quiet, tty, shown", [(False, True, True), (False, False, False), (True, True, False)])
def test_the_progress_bar_is_for_a_terminal_only(monkeypatch, quiet, tty, shown):
    monkeypatch.setattr(cli.sys, "stderr", _Stderr(tty))
    assert cli._progress(argparse.Namespace(quiet=quiet)) is shown


def test_a_folder_names_the_files_it_skips_but_not_hidden_ones(tmp_path, capsys):
    """A folder's other files are skipped, not silently: a user who dropped in a .heic or a video sees it
    left out (hidden files such as .DS_Store are left out without a word)."""
    from PIL import Image

    for name in ("b.png", "a.JPG"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name, format="PNG" if name.endswith("png") else "JPEG")
    for name in ("notes.txt", "clip.mp4", ".DS_Store", "photo.heic"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()  # a folder is not a file of the batch
    images, names = cli_io.read_folder(tmp_path)
    assert names == ["a.JPG", "b.png"] and images.shape == (2, 8, 8, 3)
    err = capsys.readouterr().err
    assert f"decinv: {tmp_path}: skipping 3 file(s) that are not images (clip.mp4, notes.txt, photo.heic); " in err
    assert ".DS_Store" not in err and "sub.png" not in err
    for name in ("notes.txt", "clip.mp4", "photo.heic"):
        (tmp_path / name).unlink()
    cli_io.read_folder(tmp_path)
    assert capsys.readouterr().err == ""
    (tmp_path / "c.png").symlink_to(tmp_path / "gone.png")  # a link whose image was moved away
    assert cli_io.read_folder(tmp_path)[1] == ["a.JPG", "b.png"]
    assert capsys.readouterr().err == f"decinv: {tmp_path}: skipping 1 broken link(s) (c.png)\n"


@pytest.mark.parametrize("flags,message", [
    (["--method", "anderson", "--cuda-graphs"], "--cuda-graphs works with adam, fsm and km"),
    (["--cuda-graphs", "--compile"], "--cuda-graphs and --compile are alternatives"),
    (["--method", "grad", "--compile"], "--compile works with the gradient-free methods; --method grad runs"),
    (["--method", "adam", "--lr", "auto"], "--lr auto is for methods"),
    (["--compile-backend", "inductr"], "--compile-backend must name a torch.compile backend"),
    (["--decode-timestep", "0.05"], "--decode-timestep: AutoencoderKL's decoder takes no timestep"),
])
def test_errors_of_the_api_name_the_flags(photo_png, tmp_path, capsys, flags, message):
    """The API's errors reach the command line in its spelling: ``--method auto``, not ``method='auto'``."""
    assert main(["invert", str(photo_png), "--steps", "1", "--out", str(tmp_path / "z.st"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decinv: error: ") and message in err and "=" not in err
    assert not (tmp_path / "z.st").exists()


def test_a_diverging_run_s_warning_names_the_flags(photo_png, tmp_path):
    """As the command line prints it (its warning format; pytest records the warning itself)."""
    with pytest.warns(RuntimeWarning, match="inversion diverged") as record:
        assert main(["invert", str(photo_png), "--steps", "20", "--method", "fsm", "--lr", "50",
                     "--out", str(tmp_path / "z.st")]) == 0
    err = cli._one_line(record[0].message, RuntimeWarning, "api.py", 1)
    assert err.startswith("decinv: warning: inversion diverged") and "(--method fsm)" in err
    assert "--lr 50.0 is likely too large" in err and "pass --keep-best to return" in err


def test_flag_names_reword_the_divergence_error():
    message = ("inversion diverged: non-finite values in torch.float16 in sample(s) [0] of 1 (method='fsm', lr=2.5); "
               "try a smaller lr, or dtype=torch.float32; or pass keep_best=True to return each sample's best point")
    assert cli.flag_names(message) == (
        "inversion diverged: non-finite values in torch.float16 in sample(s) [0] of 1 (--method fsm, --lr 2.5); "
        "try a smaller --lr, or --dtype float32; or pass --keep-best to return each sample's best point")


def test_flag_names_reword_keep_best_s_warning_and_the_attention_errors(photo_png, tmp_path, capsys):
    warning = ("inversion diverged: non-finite values in torch.float32 in sample(s) [1] of 3 after [2] step(s) "
               "(method='fsm', lr=1.5); each returns its best point (keep_best); the others ran on; try a smaller lr")
    assert cli.flag_names(warning) == (
        "inversion diverged: non-finite values in torch.float32 in sample(s) [1] of 3 after [2] step(s) "
        "(--method fsm, --lr 1.5); each returns its best point (--keep-best); the others ran on; try a smaller --lr")
    assert main(["invert", str(photo_png), "--attention", "xformers", "--steps", "1", "--quiet",
                 "--out", str(tmp_path / "z.st")]) == 2
    err = capsys.readouterr().err  # on the CPU it needs xformers installed, or else CUDA tensors
    assert re.search(r"decinv: error: --attention xformers needs (xformers installed|CUDA tensors)", err)
