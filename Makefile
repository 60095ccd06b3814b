# make test   creates .venv from requirements.txt when missing, then runs the test suite.
# make demo   the whole pipeline on the embedded digits dataset (CPU, a few minutes).
# Conda users: make test PYTHON=python (uses that interpreter, creates no .venv).
PYTHON ?= .venv/bin/python
VENV_STAMP := .venv/.installed

ifeq ($(PYTHON),.venv/bin/python)
SETUP := $(VENV_STAMP)
endif

.PHONY: test demo

$(VENV_STAMP): requirements.txt
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/python -m pip install -q -r requirements.txt
	touch $(VENV_STAMP)

test: $(SETUP)
	$(PYTHON) -m pytest -q tests
