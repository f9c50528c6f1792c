"""``decinv invert`` on moving pictures: GIFs, animated WebP and PNG, video files (the ``video`` extra),
and the still images a folder must hold."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import read_latents, run_invert
from PIL import Image

from decinv_fast import cli, invert
from decinv_fast.cli import load_vae, main
from decinv_fast.demo import bundled_photo, pan_clip

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself requires there
    import tomli as tomllib


def test_gif_and_animated_webp_in_any_case(tmp_path):
    clip = [Image.fromarray(f) for f in pan_clip(bundled_photo(), 3, 32)]
    clip[0].save(tmp_path / "clip.GIF", save_all=True, append_images=clip[1:])
    clip[0].save(tmp_path / "clip.WebP", save_all=True, append_images=clip[1:], lossless=True)
    for name in ("clip.GIF", "clip.WebP"):
        latents, meta = run_invert(tmp_path / name, tmp_path / f"{name}.st")
        assert latents.shape == (3, 4, 4, 4) and meta["layout"] == "frames,C,h,w"
    direct = invert(load_vae("fixture", torch.float32, "cpu"), np.stack([np.asarray(f) for f in clip])[None], steps=1)
    assert torch.equal(read_latents(tmp_path / "clip.WebP.st")[0], direct.latents[0])  # lossless: the frames


def test_a_single_frame_gif_is_a_still_image_as_in_a_folder(tmp_path):
    """Given alone, a one-frame GIF was a 1-frame video (layout ``frames,C,h,w``); a folder reads it as a
    still image, and so does a file now: the latents of its frame, ``(C, h, w)``."""
    frame = pan_clip(bundled_photo(), 1, 32)[0]
    Image.fromarray(frame).save(tmp_path / "still.gif")
    latents, meta = run_invert(tmp_path / "still.gif", tmp_path / "g.st")
    assert latents.shape == (4, 4, 4) and meta["layout"] == "C,h,w"
    read_back = np.asarray(Image.open(tmp_path / "still.gif").convert("RGB"))  # the GIF's palette colours
    assert torch.equal(latents, invert(load_vae("fixture", torch.float32, "cpu"), read_back, steps=1).latents)


def test_animations_in_a_folder_are_refused_naming_them(tmp_path, capsys):
    """A folder is a batch of still images: an animated WebP was read as its first frame and a GIF skipped,
    silently. Now every animation is named; a single-frame GIF is an image of the batch."""
    clip = [Image.fromarray(f) for f in pan_clip(bundled_photo(), 3, 32)]
    folder = tmp_path / "frames"
    folder.mkdir()
    clip[0].save(folder / "1.png")
    clip[1].save(folder / "2.gif")
    _, meta = run_invert(folder, tmp_path / "still.st")
    assert json.loads(meta["files"]) == ["1.png", "2.gif"]
    clip[0].save(folder / "3.webp", save_all=True, append_images=clip[1:], lossless=True)
    clip[0].save(folder / "4.GIF", save_all=True, append_images=clip[1:2])
    assert main(["invert", str(folder), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {folder}: a folder is a batch of still images") and "\n" not in err
    assert "3.webp (3 frames), 4.GIF (2 frames) have more than one frame" in err and "on its own" in err


def test_animated_png_is_a_video_and_a_phone_mpo_jpeg_an_image(tmp_path):
    clip = [Image.fromarray(f) for f in pan_clip(bundled_photo(), 3, 32)]
    clip[0].save(tmp_path / "clip.png", save_all=True, append_images=clip[1:])
    latents, meta = run_invert(tmp_path / "clip.png", tmp_path / "apng.st")
    assert latents.shape == (3, 4, 4, 4) and meta["layout"] == "frames,C,h,w"
    direct = invert(load_vae("fixture", torch.float32, "cpu"), np.stack([np.asarray(f) for f in clip])[None], steps=1)
    assert torch.equal(latents, direct.latents[0])
    clip[0].save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=clip[1:2])  # a second image
    assert Image.open(tmp_path / "phone.jpg").n_frames == 2
    latents, meta = run_invert(tmp_path / "phone.jpg", tmp_path / "mpo.st")
    assert latents.shape == (4, 4, 4) and meta["layout"] == "C,h,w"  # its picture, not a 2-frame video

def test_a_sixteen_bit_animated_png_is_read_at_its_depth(tmp_path):
    """The frames of an animation are read as still images are: a 16-bit grayscale APNG (frames of mode I;16)
    gives the latents of its 8-bit version (value * 257 / 65535 = value / 255); convert("RGB") made it white."""
    clip = [np.asarray(Image.fromarray(f).convert("L")) for f in pan_clip(bundled_photo(), 3, 32)]
    narrow = [Image.fromarray(f) for f in clip]
    narrow[0].save(tmp_path / "clip8.png", save_all=True, append_images=narrow[1:])
    wide = [Image.fromarray(f.astype(np.uint16) * 257) for f in clip]
    wide[0].save(tmp_path / "clip16.png", save_all=True, append_images=wide[1:])
    assert Image.open(tmp_path / "clip16.png").mode == "I;16" and Image.open(tmp_path / "clip16.png").n_frames == 3
    reference, meta = run_invert(tmp_path / "clip8.png", tmp_path / "8.st")
    assert reference.shape == (3, 4, 4, 4) and meta["layout"] == "frames,C,h,w"
    wide_latents = run_invert(tmp_path / "clip16.png", tmp_path / "16.st")[0]
    torch.testing.assert_close(wide_latents, reference, rtol=1e-5, atol=1e-5)


def test_video_without_a_reader_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as when the video extra is not installed
    (tmp_path / "clip.MP4").write_bytes(b"\0" * 64)
    assert main(["invert", str(tmp_path / "clip.MP4"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'decinv-fast[video]'" in err and "\n" not in err
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["video"] == ["imageio", "imageio-ffmpeg"] and "imageio" not in extras["dev"]


def _write_video(path, frames, **codec):
    imageio = pytest.importorskip("imageio")
    pytest.importorskip("imageio_ffmpeg", reason="video files need the video extra")
    imageio.mimwrite(path, list(frames), fps=8, macro_block_size=1, ffmpeg_log_level="error", **codec)


LOSSLESS = {"clip.mp4": {"codec": "libx264rgb", "pixelformat": "rgb24", "output_params": ["-crf", "0"]},
            "clip.MKV": {"codec": "ffv1", "pixelformat": "bgr0"}}


@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_a_lossless_video_file_gives_the_latents_of_its_frames(tmp_path, name):
    """A video file is one video of its frames in order: written losslessly, ``decinv invert`` on it
    gives exactly what ``invert`` gives on the frames themselves."""
    clip = pan_clip(bundled_photo(), 4, 32)
    _write_video(tmp_path / name, clip, **LOSSLESS[name])
    latents, meta = run_invert(tmp_path / name, tmp_path / "video.st")
    assert latents.shape == (4, 4, 4, 4) and meta["layout"] == "frames,C,h,w"
    direct = invert(load_vae("fixture", torch.float32, "cpu"), clip[None], steps=1)
    assert torch.equal(latents, direct.latents[0])


def test_an_ordinary_lossy_mp4_is_read_close_to_its_frames(tmp_path):
    """The common case, H.264 in 4:2:0 at the default quality: every frame, in order, near what was written."""
    from decinv_fast.cli_io import read_video

    clip = pan_clip(bundled_photo(), 5, 32)
    _write_video(tmp_path / "clip.mp4", clip, quality=9)
    frames = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (1, 5, 32, 32, 3) and frames.dtype == np.uint8
    error = np.abs(frames[0].astype(np.float32) - clip).mean(axis=(1, 2, 3))
    assert (error < 12).all(), error  # chroma subsampling; a wrong frame order or a shifted frame is far more
    shifted = np.abs(frames[0, 1:].astype(np.float32) - clip[:-1]).mean(axis=(1, 2, 3))
    assert (shifted > error[1:]).all(), (shifted, error)


def test_a_broken_video_file_is_one_line_naming_it(tmp_path, capsys):
    clip = pan_clip(bundled_photo(), 3, 32)
    _write_video(tmp_path / "whole.mp4", clip, **LOSSLESS["clip.mp4"])
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "whole.mp4").read_bytes()[:200])
    assert main(["invert", str(tmp_path / "cut.mp4"), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"decinv: error: {tmp_path / 'cut.mp4'}: cannot read it as a video") and "\n" not in err


def test_a_folder_of_images_of_two_sizes_is_one_line_naming_them(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(bundled_photo()[:32, :32]).save(folder / "1.png")
    Image.fromarray(bundled_photo()[:32, :40]).save(folder / "2.png")
    assert main(["invert", str(folder), "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"decinv: error: {folder}: the images of a folder (a batch) must have one size; got 1.png 32x32, " \
                  "2.png 40x32"


def test_a_decode_timestep_reaches_the_ltx_decoder(tmp_path, capsys):
    """``--decode-timestep 0.05`` with a saved LTX-Video 0.9.1-style VAE: the latents of ``invert`` on that
    decoder, recorded in the metadata; a VAE whose decoder takes no timestep is a one-line error."""
    from video_vae_models import make_vae

    from decinv_fast import as_adapter

    make_vae("ltx-timestep").save_pretrained(tmp_path / "ltx")
    frames = pan_clip(bundled_photo(), 9, 32)
    clip = [Image.fromarray(f) for f in frames]
    clip[0].save(tmp_path / "clip.png", save_all=True, append_images=clip[1:])
    latents, meta = run_invert(tmp_path / "clip.png", tmp_path / "z.st", "--vae", str(tmp_path / "ltx"),
                               "--decode-timestep", "0.05")
    assert meta["decode_timestep"] == "0.05"
    at = as_adapter(make_vae("ltx-timestep"), decode_timestep=0.05)
    assert torch.equal(latents, invert(at, np.stack(frames)[None], steps=1).latents[0])
    plain = run_invert(tmp_path / "clip.png", tmp_path / "p.st", "--vae", str(tmp_path / "ltx"))[0]
    assert not torch.equal(plain, latents)
    make_vae("wan").save_pretrained(tmp_path / "wan")
    assert main(["invert", str(tmp_path / "clip.png"), "--vae", str(tmp_path / "wan"), "--decode-timestep", "0.05",
                 "--quiet", "--out", str(tmp_path / "w.st")]) == 2
    assert "error: --decode-timestep: AutoencoderKLWan's decoder takes no timestep" in capsys.readouterr().err


def _frames_folder(folder, frames):
    folder.mkdir()
    for i, f in enumerate(frames):  # names in natural order: 2.png before 10.png
        Image.fromarray(f).save(folder / f"{i + 1}.png")
    return folder


def test_as_video_reads_a_folder_as_one_video(tmp_path):
    """``--as-video``: a folder of frames is one video (the fixture's frames; a video VAE's latent frames),
    its latents those of ``invert`` on the frames as ``(1, F, H, W, 3)``; without it, a batch of images."""
    from video_vae_models import make_vae

    frames = pan_clip(bundled_photo(), 10, 32)
    folder = _frames_folder(tmp_path / "frames", frames)
    latents, meta = run_invert(folder, tmp_path / "v.st", "--as-video")
    assert latents.shape == (10, 4, 4, 4) and meta["layout"] == "frames,C,h,w"
    assert json.loads(meta["files"]) == [f"{i}.png" for i in range(1, 11)]
    direct = invert(load_vae("fixture", torch.float32, "cpu"), np.stack(frames)[None], steps=1)
    assert torch.equal(latents, direct.latents[0])
    make_vae("wan").save_pretrained(tmp_path / "wan")
    nine = _frames_folder(tmp_path / "nine", frames[:9])
    latents, meta = run_invert(nine, tmp_path / "w.st", "--as-video", "--vae", str(tmp_path / "wan"))
    assert latents.shape == (4, 3, 4, 4) and meta["layout"] == "C,f,h,w"  # 9 frames -> 3 latent frames
    assert torch.equal(latents, invert(make_vae("wan"), np.stack(frames[:9])[None], steps=1).latents[0])
    latents, meta = run_invert(nine, tmp_path / "b.st", "--vae", str(tmp_path / "wan"))
    assert latents.shape == (9, 4, 1, 4, 4) and meta["layout"] == "batch,C,f,h,w"  # nine 1-frame videos


def test_a_temporal_decoder_on_a_folder_names_as_video(tmp_path):
    """The API's warning for a temporal-decoder VAE given a batch of stills names what a command-line
    user can do (``--as-video``), not the API's ``(1, F, 3, H, W)``; with it there is no warning."""
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(0)
    AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(32,) * 4,
                                 layers_per_block=1, latent_channels=4).save_pretrained(tmp_path / "svd")
    folder = _frames_folder(tmp_path / "frames", pan_clip(bundled_photo(), 3, 32))
    with pytest.warns(UserWarning, match="3 images without a frame axis") as record:  # as the command line prints it
        run_invert(folder, tmp_path / "b.st", "--vae", str(tmp_path / "svd"))
    err = cli._one_line(record[0].message, UserWarning, "api.py", 1)
    assert err.startswith("decinv: warning: images: 3 images without a frame axis")
    assert "frames are decoded together with --as-video (the folder read as one video)" in err and "(1, F" not in err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        latents, _ = run_invert(folder, tmp_path / "v.st", "--vae", str(tmp_path / "svd"), "--as-video")
    assert latents.shape == (3, 4, 4, 4)


def test_as_video_on_a_file_or_frames_of_two_sizes_is_one_line(tmp_path, capsys):
    Image.fromarray(bundled_photo()[:32, :32]).save(tmp_path / "one.png")
    assert main(["invert", str(tmp_path / "one.png"), "--as-video", "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("decinv: error: --as-video reads a folder of images as one video; ") and "\n" not in err
    folder = _frames_folder(tmp_path / "frames", [bundled_photo()[:32, :32], bundled_photo()[:32, :40]])
    assert main(["invert", str(folder), "--as-video", "--quiet", "--out", str(tmp_path / "o.st")]) == 2
    assert capsys.readouterr().err.strip() == f"decinv: error: {folder}: the images of a folder (one video's " \
                                               "frames, --as-video) must have one size; got 1.png 32x32, 2.png 40x32"


def test_auto_on_a_causal_video_vae_records_its_runs_apart(tmp_path):
    """``--method auto`` on a 9-frame video of a causal video VAE (3 latent frames): the metadata says how many
    steps its first frame and the frames of its first two latent frames took alone; the latents are the API's."""
    from video_vae_models import make_vae

    frames = pan_clip(bundled_photo(), 9, 32)
    make_vae("wan").save_pretrained(tmp_path / "wan")
    folder = _frames_folder(tmp_path / "nine", frames)
    latents, meta = run_invert(folder, tmp_path / "a.st", "--as-video", "--vae", str(tmp_path / "wan"),
                               "--method", "auto", "--steps", "6")
    direct = invert(make_vae("wan"), np.stack(frames)[None], method="auto", steps=6)
    assert torch.equal(latents, direct.latents[0]) and direct.second_frame_steps == 3
    assert meta["first_frame_steps"] == str(int(direct.first_frame_steps[0])) and meta["second_frame_steps"] == "3"
    _, meta = run_invert(folder, tmp_path / "f.st", "--as-video", "--vae", str(tmp_path / "wan"), "--steps", "2")
    assert meta["first_frame_steps"] == meta["second_frame_steps"] == "-"  # adam, by default without them
