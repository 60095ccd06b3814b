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

# The demo grid (reproduce_table.py): CLD scores from a 6-epoch resnet20 run on the embedded
# digits (no download), then resnet20 trained for 6 epochs on the top / middle / bottom / random
# k = 5, 10, 20 examples per class, 3 seeds each (36 runs), on the CPU. Outputs go to demo/;
# `make demo` again only reprints the table (finished runs are skipped); rm -rf demo to redo it.
# One thread: the numbers then match the README's table, and on a busy machine two threads per
# process spin against other jobs (measured: 4x the CPU time). DEMO_THREADS=2 on an idle machine.
DEMO_THREADS ?= 1
DEMO_FLAGS := --dataset digits --score_model_arch resnet20 --model_archs resnet20 --methods cld \
	--orders top,middle,bottom,random --samples_per_class 5,10,20 --seeds 0,1,2 \
	--score_epochs 6 --score_schedule '[4]' --epochs 6 --schedule '[4]' --batch_size 8 --learning_rate 0.02 \
	--device cpu --precision fp32 --workers 0 --scores_dir demo/Scores --splits_dir demo/Splits \
	--checkpoint_path demo/Checkpoint --logpath demo/Logs --results_dir demo/Results

demo: $(SETUP)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PYTHON) reproduce_table.py $(DEMO_FLAGS)
