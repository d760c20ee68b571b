# serpent-basicsr: the two commands are `make demo` and `make test`.
PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
VPIP    := $(VPY) -m pip
STAMP   := $(VENV)/.installed
export MAMBA_SKIP_CUDA_BUILD := TRUE
export MAMBA_FORCE_BUILD := TRUE

.PHONY: demo test venv data bench clean-venv

venv: $(STAMP)

# Order matters: torch first (basicsr's and mamba-ssm's builds import it), then the pinned
# requirements, then basicsr without its tb-nightly requirement, then mamba-ssm without CUDA
# build (its CUDA extension is only built on GPU machines), then our package with its C++ scan.
$(STAMP): requirements.txt setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPIP) install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(VPIP) install --quiet --disable-pip-version-check -r requirements.txt
	$(VPIP) install --quiet --disable-pip-version-check --no-build-isolation --no-deps basicsr==1.4.2
	$(VPIP) install --quiet --disable-pip-version-check --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
	$(VPIP) install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(STAMP)
