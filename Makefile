# serpent-basicsr. The two commands: `make demo` (set up, prepare the embedded default
# data, train the main job, print the report) and `make test` (set up, run every test).
PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
# No pip cache: the venv alone is ~6 GB (torch's CUDA wheels); a CI machine short of disk
# failed here once with "No space left on device", and a cached copy of each download helps nobody.
PIP     := $(VPY) -m pip --disable-pip-version-check --no-cache-dir
STAMP   := $(VENV)/.installed
# mamba-ssm: install the Python package without compiling its CUDA kernels (hours, and
# no GPU here); our code only uses it where its compiled extension imports.
export MAMBA_SKIP_CUDA_BUILD := TRUE
export MAMBA_FORCE_BUILD := TRUE
# Our own install must build the C++ scan kernel (a plain `pip install` may fall back).
export SERPENT_REQUIRE_CPU_KERNEL := 1
# On a busy machine, spinning OpenMP threads slow small ops 10-100x; idle ones sleep instead.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv test demo data bench bench-scan bench-efficiency bench-data bench-quality gpu-check clean

venv: $(STAMP)

# Order matters: torch first (basicsr's and mamba-ssm's builds import it), the pinned
# requirements, basicsr without its tb-nightly requirement (it breaks the tensorboard CLI),
# mamba-ssm, then our package (editable) with its C++ kernel (rebuilt when csrc/ changes).
$(STAMP): requirements.txt setup.py pyproject.toml $(wildcard serpent_basicsr/ops/csrc/*)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-build-isolation --no-deps basicsr==1.4.2
	$(PIP) install --quiet --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	$(VPY) -c "import serpent_basicsr, basicsr; print('serpent-basicsr ready:', serpent_basicsr.ops.available_backends())"
	touch $(STAMP)

test: venv
	$(VPY) -m pytest -q -p no:cacheprovider tests

data: venv
	$(VPY) datasets/make_default_data.py

demo: data
	$(VENV)/bin/basicsr train -opt options/serpent_deblur.yml
	$(VPY) -m serpent_basicsr.report --exp experiments/serpent_deblur_default

bench-scan: venv
	$(VPY) bench/scan/bench_scan.py
	$(VPY) bench/scan/bench_layouts.py

bench-efficiency: venv
	$(VPY) bench/efficiency/run_efficiency.py

bench-data: data
	$(VPY) bench/data/bench_data.py

bench-quality: data
	$(VPY) bench/quality/run.py

bench: bench-scan bench-efficiency bench-data bench-quality

gpu-check: venv
	bash bench/gpu/run_gpu.sh

clean:
	rm -rf experiments results tb_logger build
