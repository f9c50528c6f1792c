"""``decinv invert``'s files: outputs that would overwrite an input or each other, a folder's hidden files,
and unreadable images and VAE configs as one line naming the file."""

import numpy as np
import pytest
from PIL import Image

from decinv_fast import cli, cli_io
from decinv_fast.cli import main


@pytest.fixture
def no_vae(monkeypatch):
    """The checks under test come before the VAE loads: loading it fails the test."""
    def refuse(*args):
        raise AssertionError("the VAE was loaded")

    monkeypatch.setattr(cli, "load_vae", refuse)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("decinv: error: ") and "\n" not in err, err
    return err.removeprefix("decinv: error: ")


def test_an_output_that_is_the_input_image_is_refused(tmp_path, photo_png, capsys, no_vae, monkeypatch):
    before = photo_png.read_bytes()
    assert main(["invert", str(photo_png), "--quiet", "--out", str(photo_png)]) == 2
    assert _error(capsys) == f"--out {photo_png} is the input file; choose another path"
    monkeypatch.chdir(tmp_path)  # another spelling of the same file
    assert main(["invert", str(photo_png), "--quiet", "--out", "z.st", "--png", "./photo.png"]) == 2
    assert _error(capsys) == "--png ./photo.png is the input file; choose another path"
    assert photo_png.read_bytes() == before


def test_an_output_that_is_an_image_of_the_input_folder_is_refused(tmp_path, capsys, no_vae):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16)).save(folder / name)
    (tmp_path / "link.png").symlink_to(folder / "b.png")
    assert main(["invert", str(folder), "--quiet", "--out", str(tmp_path / "link.png")]) == 2
    link = tmp_path / "link.png"
    assert _error(capsys) == f"--out {link} is an input image (of folder {folder}); choose another path"


def test_a_panel_over_the_latents_is_refused(tmp_path, photo_png, capsys, no_vae, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["invert", str(photo_png), "--quiet", "--out", "out.png", "--png", str(tmp_path / "out.png")]) == 2
    err = _error(capsys)
    assert err.startswith(f"--png {tmp_path / 'out.png'} is also the --out file;"), err


def test_a_folder_skips_hidden_images_silently(tmp_path, capsys):
    """macOS's AppleDouble ``._a.png`` (not an image at all) and a hidden image of another size are not
    part of the batch."""
    Image.new("RGB", (16, 16), (10, 20, 30)).save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden.png")
    images, names = cli_io.read_folder(tmp_path)
    assert names == ["a.png"] and images.shape == (1, 16, 16, 3)
    assert capsys.readouterr().err == ""


def test_a_truncated_image_in_a_folder_is_named(tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "b.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    assert main(["invert", str(tmp_path), "--quiet", "--out", str(tmp_path / "z.st")]) == 2
    err = _error(capsys)
    assert err.startswith(f"{tmp_path / 'a.png'}: ") and "truncated" in err, err


def test_a_file_that_is_no_image_is_named_once(tmp_path, capsys):
    """PIL's own message names the file already: not prefixed with it again."""
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    assert main(["invert", str(tmp_path), "--quiet", "--out", str(tmp_path / "z.st")]) == 2
    err = _error(capsys)
    assert "cannot identify image file" in err and err.count(str(tmp_path / "b.png")) == 1, err


def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path, photo_png, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x32 is over twice as many: PIL's error, not its warning
    assert main(["invert", str(photo_png), "--quiet", "--out", str(tmp_path / "z.st")]) == 2
    err = _error(capsys)
    assert err.startswith(f"{photo_png}: ") and "decompression bomb" in err, err


def test_a_malformed_vae_config_names_the_flag_and_the_file(tmp_path, photo_png, capsys):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL",')
    assert main(["invert", str(photo_png), "--quiet", "--vae", str(tmp_path / "vae"),
                 "--out", str(tmp_path / "z.st")]) == 2
    err = _error(capsys)
    assert err.startswith(f"--vae {tmp_path / 'vae'}: {tmp_path / 'vae' / 'config.json'} is not valid JSON"), err
