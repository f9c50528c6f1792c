"""scripts/train_fixture_vae.py and scripts/evaluate_fixture_vae.py: argument checks, resuming, and the
records they write (tiny runs: 16-pixel crops, batch 1, a few steps)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("skimage")  # the training crops are scikit-image's photographs

SCRIPTS = Path(__file__).parents[1] / "scripts"
TINY = ["--steps", "2", "--batch", "1", "--size", "16", "--threads", "1"]  # checkpoints at the last step


def script(name):
    if str(SCRIPTS) not in sys.path:  # as `python scripts/<name>.py` has it: the scripts import argument_types
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    return script("train_fixture_vae").main


def weights(folder):
    return load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("args,message", [
    ([], "--out"),  # no default: it was the shipped weights' folder, overwritten by a bare run
    (["--steps", "0"], "--steps: must be above 0"),
    (["--stop-after", "0"], "--stop-after: must be above 0"),  # 0 ran the whole schedule
    (["--log-every", "0"], "--log-every: must be above 0"),  # ZeroDivisionError at step 1
    (["--size", "60"], "--size: must be a positive multiple of 8"),
    (["--lr", "nan"], "--lr: must be above 0"),
    (["--size", "0"], "--size: must be a positive multiple of 8"),  # 0 % 8 == 0
    (["--kl-weight", "nan"], "--kl-weight: must be 0 or more"),  # NaN compares False: `value < 0` let it through
    (["--cycle-weight", "-1"], "--cycle-weight: must be 0 or more"),
    (["--init", "{tmp}/nowhere"], "no config.json"),
])
def test_bad_arguments_are_refused_before_training(train, tmp_path, capsys, args, message):
    # after TINY, whose values the case's own override: were a check to regress, a 2-step run, not 6000 steps
    args = [a.format(tmp=tmp_path) for a in args]
    args = [*TINY, *args, "--out", str(tmp_path / "o")] if args else []
    with pytest.raises(SystemExit) as exit_:
        train(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def whole(train, tmp_path_factory):
    """A finished 2-step run."""
    out = tmp_path_factory.mktemp("whole")
    train([*TINY, "--out", str(out)])
    return out


@pytest.mark.slow  # trains the fixture's architecture for a few steps
def test_resume_gives_the_weights_of_an_unbroken_run_and_checks_its_arguments(train, whole, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):  # was a silent fresh start
        train([*TINY, "--resume", "--out", str(tmp_path / "a")])
    train([*TINY, "--stop-after", "1", "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a" / "config.json").exists()  # unfinished: nothing exported
    with pytest.raises(SystemExit, match=r"--lr 0.002 \(now 0.001\)"):  # was a silent mix of two runs
        train([*TINY, "--resume", "--lr", "1e-3", "--out", str(tmp_path / "a")])
    train([*TINY, "--resume", "--out", str(tmp_path / "a")])
    expected, resumed = weights(whole), weights(tmp_path / "a")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    phases = json.loads((tmp_path / "a" / "training.json").read_text())["phases"]
    assert len(phases) == 1 and phases[0]["command"].endswith(f"--resume --out {tmp_path / 'a'}")


@pytest.mark.slow  # trains the fixture's architecture for a few steps
def test_a_fine_tune_records_the_phases_before_it(train, whole, tmp_path):
    """training.json of the shipped fixture lists both phases; make fixture's second phase wrote only its own."""
    train([*TINY, "--init", str(whole), "--cycle-weight", "0.2", "--seed", "1", "--out", str(tmp_path)])
    phases = json.loads((tmp_path / "training.json").read_text())["phases"]
    assert [p["seed"] for p in phases] == [0, 1] and "--cycle-weight 0.2" in phases[1]["command"]
    assert phases[0] == json.loads((whole / "training.json").read_text())["phases"][0]


@pytest.mark.slow  # trains the fixture's architecture for a few steps
def test_export_checkpoint_uses_the_runs_crop_size(whole, tmp_path, monkeypatch):
    module = script("train_fixture_vae")
    sizes = []
    real = module.RandomCrops

    def crops(size, seed):
        sizes.append((size, seed))
        return real(size, seed)

    monkeypatch.setattr(module, "RandomCrops", crops)
    module.main(["--export-checkpoint", str(whole), "--out", str(tmp_path / "exported")])
    assert sizes == [(16, 1)]  # the run's 16-pixel crops (64 was hard-coded), seed + 1
    assert (tmp_path / "exported" / "config.json").is_file()
    with pytest.raises(SystemExit, match="no checkpoint"):
        module.main(["--export-checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("args,message", [
    (["--count", "0"], "--count: must be above 0"),  # a traceback from np.stack after loading the VAE
    (["--size", "60"], "--size: must be a positive multiple of 8"),  # a traceback from the VAE's decoder
    (["--size", "0"], "--size: must be a positive multiple of 8"),
    (["--vae", "{tmp}"], "no config.json"),
])
def test_evaluation_arguments_are_refused_before_it_runs(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        script("evaluate_fixture_vae").main([a.format(tmp=tmp_path) for a in args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "evaluation.json").exists()


def test_evaluation_scores_are_means_of_per_crop_db():
    mean_db = script("evaluate_fixture_vae").mean_db
    truth = torch.tensor([[1.0, 0.0], [0.0, 10.0]])
    estimate = truth + torch.tensor([[0.1, 0.0], [0.0, 0.1]])  # -20 dB and -40 dB; -37 dB over both at once
    assert mean_db(estimate, truth) == pytest.approx(-30.0, abs=1e-4)


def test_init_phases_reads_new_and_older_training_records(tmp_path):
    init_phases = script("train_fixture_vae").init_phases
    assert init_phases(None) == [] and init_phases(str(tmp_path)) == []  # no --init, or weights with no record
    (tmp_path / "training.json").write_text(json.dumps({"seed": 0, "steps": 6000}))  # an older one-phase record
    assert init_phases(str(tmp_path)) == [{"seed": 0, "steps": 6000}]
    (tmp_path / "training.json").write_text(json.dumps({"phases": [{"seed": 0}, {"seed": 1}]}))
    assert init_phases(str(tmp_path)) == [{"seed": 0}, {"seed": 1}]


@pytest.mark.slow  # trains the fixture's architecture for a step
def test_resume_refuses_another_cycle_weight(train, tmp_path):
    train([*TINY, "--stop-after", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--cycle-weight 0.0 \(now 0.2\)"):
        train([*TINY, "--resume", "--cycle-weight", "0.2", "--out", str(tmp_path)])


@pytest.mark.slow  # the evaluation on two 16-pixel crops (its 128-pixel reconstruction PSNR as shipped)
def test_evaluation_follows_the_protocol(tmp_path, monkeypatch):
    import decinv_fast
    from decinv_fast.fixture import fixture_dir
    from decinv_fast.protocol import make_target
    from decinv_fast.testbed import heldout_crops

    module = script("evaluate_fixture_vae")
    monkeypatch.setattr(module, "STEPS", (50,))
    report = module.evaluate(str(fixture_dir()), 2, 16, 3)
    assert (report["heldout_crops"], report["crop_size"], report["target_seed"]) == (2, 16, 3)
    vae = decinv_fast.load_fixture_vae()
    target = make_target(vae, heldout_crops(size=16, count=2), seed=3)
    rows = report["nmse_db"]
    assert rows["encoder-only"] == module.mean_db(decinv_fast.encode(vae, target.images), target.latents)
    adam = decinv_fast.invert(vae, target.images, steps=50)
    assert rows["gradient-free adam 50 steps"] == pytest.approx(module.mean_db(adam.latents, target.latents), abs=1e-4)
    assert report["gain_adam50_over_encoder_db"] == rows["encoder-only"] - rows["gradient-free adam 50 steps"]
