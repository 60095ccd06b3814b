# make test   creates .venv from requirements.txt and requirements-frameworks.txt (the frameworks that
#             cld_recorder.py's callbacks plug into) when missing, then runs the test suite.
# make demo   the whole pipeline on the embedded digits dataset (CPU, about 7 minutes on 2 cores).
# Conda users: make test PYTHON=python (uses that interpreter, creates no .venv).
PYTHON ?= .venv/bin/python
VENV_STAMP := .venv/.installed

ifeq ($(PYTHON),.venv/bin/python)
SETUP := $(VENV_STAMP)
endif

.PHONY: test demo

$(VENV_STAMP): requirements.txt requirements-frameworks.txt
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/python -m pip install -q -r requirements.txt -r requirements-frameworks.txt
	touch $(VENV_STAMP)

test: $(SETUP)
	$(PYTHON) -m pytest -q --durations=15 tests

# The demo grid (reproduce_table.py) on the embedded digits (no download), on the CPU, outputs in
# demo/: stage 1 trains a small CNN for 30 epochs and records the loss trajectories (keeping its
# weights after epoch 10 for the model-based baselines); stage 2 scores CLD and every baseline;
# stage 3 trains the CNN to convergence (15 epochs at batch 20, no augmentation: an 8x8 digit has
# little room for crops) on k = 5, 10, 20, 40 examples per class of each ranking
# (CLD: top, near-zero, bottom; every baseline: top; and a random draw), 5 seeds each, two runs
# at a time; then the table, the accuracy plot, the CLD-order bars, the method overlap and CLD's
# overview figure. `make demo` again only reprints the table; Ctrl-C and rerun continues; rm -rf demo
# to redo it. One thread per process, with the scripts' portable CPU kernels (--cpu_kernels), so that
# every x86-64 machine with AVX2 prints the same table.
DEMO_THREADS ?= 1
DEMO_METHODS := cld,el2n,forgetting,aum,least_confidence,entropy,margin,herding,kcenter,contextual_diversity,cal,moderate
DEMO_METHODS := $(DEMO_METHODS),grand,craig,gradmatch,glister,facility_location,graph_cut,log_determinant,deepfool
DEMO_FLAGS := --dataset digits --score_model_arch digits_cnn --model_archs digits_cnn --methods $(DEMO_METHODS) \
	--orders top,random --method_orders cld:zero,cld:bottom --samples_per_class 5,10,20,40 --seeds 0,1,2,3,4 \
	--score_epochs 30 --score_schedule '[20]' --score_batch_size 32 --score_learning_rate 0.05 --score_augment true \
	--snapshot_epochs '[10]' --epochs 15 --schedule '[10]' --batch_size 20 --learning_rate 0.1 --augment false \
	--test_batch_size 512 \
	--device cpu --precision fp32 --workers 0 --jobs 2 --scores_dir demo/Scores --splits_dir demo/Splits \
	--checkpoint_path demo/Checkpoint --logpath demo/Logs --results_dir demo/Results

demo: $(SETUP)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PYTHON) reproduce_table.py $(DEMO_FLAGS)
