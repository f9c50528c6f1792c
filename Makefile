# Two commands a fresh clone needs: `make demo` and `make test` (each creates .venv itself).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.14.1 is the CUDA 13.0 build; it also runs on the CPU. Override for another build.
TORCH_SPEC ?= torch==2.14.1
export CUDA_HOME ?= $(shell sh scripts/cuda_home.sh)
# the venv's ninja (torch looks for it on PATH) builds the extension in parallel (MAX_JOBS), cached
BUILD := PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pip install --quiet --no-build-isolation

.PHONY: demo test lint bench fixture clean

# torch is installed first and the package with --no-build-isolation: setup.py imports torch to
# build the CUDA extension decinv_fast._C (when nvcc is found; objects are cached in build/).
$(VENV)/.runtime: pyproject.toml setup.py $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77" wheel ninja
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(BUILD) -e ".[demo]"
	touch $@

# the video extra (imageio-ffmpeg) lets the tests read and write .mp4/.mkv files
$(VENV)/.dev: $(VENV)/.runtime
	$(BUILD) -e ".[dev,triton,demo,video]"
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/decinv demo --out demo_output

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check decinv_fast kernels tests benchmarks scripts

bench: $(VENV)/.dev
	$(PY) -m benchmarks.run_all

# Re-train the bundled fixture VAE (about an hour on 2 cores; see scripts/train_fixture_vae.py).
fixture: $(VENV)/.dev
	$(PY) scripts/train_fixture_vae.py --steps 6000 --out build/fixture_base
	$(PY) scripts/train_fixture_vae.py --init build/fixture_base --cycle-weight 0.2 --steps 1200 --lr 3e-4 \
		--seed 1 --out decinv_fast/assets/fixture_vae
	$(PY) scripts/evaluate_fixture_vae.py

clean:
	rm -rf $(VENV) build *.egg-info demo_output decinv_fast/_C*.so
