# The README's two set-up commands: `make demo` and `make test`. Each creates .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo
VGG ?= ../shared/weights/vgg19-features-relu3_1.pth
# A reduced VAE for a few minutes on 2 CPU cores (the paper's configuration is for GPUs; see README).
# Without VGG weights the demo uses the pixel loss with beta 1: the paper's beta 0.03 is scaled for the
# perceptual loss, and with pixel errors it lets the KL win (posterior collapse).
DEMO_VAE := --image-size 48 --encoder "16@4x4-1,32@4x4-2,32@4x4-2,64@4x4-2" \
	--decoder "64@3x3-1,32@3x3-2,32@3x3-2,16@3x3-2" --latent 16 --epochs 2 --batch-size 32 --workers 0
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

# The positive control (README: "The positive control"): Stoianov & Zorzi's dot stimuli, a small VAE with the
# Bernoulli loss, two seeds, and the analysis with its controls, over the runs and over the course of training
# (every second epoch kept, from the untrained model on); about 20 minutes on 2 CPU cores.
DOTS ?= runs/dots
DOTS_VAE := --epochs 16 --latent 16 --encoder "32@4x4-2,64@4x4-2,128@4x4-2" --decoder "128@3x3-2,64@3x3-2,32@3x3-2" \
	--recon bce --beta 1 --batch-size 128 --crop-max 0 --brightness 0 --contrast 0 --saturation 0 --hue 0 --workers 0 \
	--save-every 2
# Held-out arrays whose field varies, so that their convex hull goes less with N: the numerosity comparison's test
# of whether the codes' acuity is number's or the hull's (README: "When the field varies").
VARIED_FIELD := --field-range 0.4-0.9 --area-range 0.03-0.12

.PHONY: demo dots test clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e .
	@touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/synthgen build --n 3000 --out $(DEMO)/synth
	$(BIN)/synthgen inspect $(DEMO)/synth
	$(BIN)/synthgen verify $(DEMO)/synth --no-progress
	@if [ -f $(DEMO)/vae/last.pt ]; then $(BIN)/vae-train --out $(DEMO)/vae --resume --workers 0; \
	elif [ -f "$(VGG)" ]; then $(BIN)/vae-train --data $(DEMO)/synth --out $(DEMO)/vae $(DEMO_VAE) --vgg-weights $(VGG); \
	elif $(BIN)/python -c "import sys; from vae.vgg import hub_cache_path; sys.exit(not hub_cache_path().exists())"; \
	then $(BIN)/vae-train --data $(DEMO)/synth --out $(DEMO)/vae $(DEMO_VAE); \
	else echo "No VGG-19 weights on this machine: the demo trains with the pixel loss (README: 'VGG-19 weights')."; \
	$(BIN)/vae-train --data $(DEMO)/synth --out $(DEMO)/vae $(DEMO_VAE) --recon pixel --beta 1; fi
	$(BIN)/synthgen build --n 1000 --same-object --source-objects 15 --max-occlusion 0 --seed 1 \
		--out $(DEMO)/analysis-set --no-progress
	$(BIN)/analyze-area-vs-number --checkpoint $(DEMO)/vae/best.pt --data $(DEMO)/analysis-set \
		--out $(DEMO)/analysis --no-progress
	$(BIN)/vae-subitize --checkpoint $(DEMO)/vae/best.pt --train $(DEMO)/synth --test $(DEMO)/analysis-set \
		--out $(DEMO)/readout --no-progress
	@echo
	@echo "Demo outputs:"
	@echo "  synthetic set    $(DEMO)/synth  (manifest.json, HDF5 shards; format in docs/SHARD_FORMAT.md)"
	@echo "  set figures      $(DEMO)/synth/inspect/count_vs_area.png, $(DEMO)/synth/inspect/contact_sheet.png"
	@echo "  trained VAE      $(DEMO)/vae/best.pt, $(DEMO)/vae/last.pt (vae.load_model rebuilds the model from either)"
	@echo "  training figures $(DEMO)/vae/reconstruction.png, $(DEMO)/vae/loss_curves.png; log: $(DEMO)/vae/metrics.jsonl"
	@echo "  area vs number   $(DEMO)/analysis/report.md (table dimensions.csv, figures *.png in the same folder)"
	@echo "  readout          $(DEMO)/readout/table.md (Table 1 layout; readout.json, confusion.png)"

dots: $(VENV)/.installed
	$(BIN)/synthgen dots --n 25600 --out $(DOTS)/train
	$(BIN)/synthgen dots --n 5120 --seed 1 --out $(DOTS)/test --no-progress
	$(BIN)/synthgen dots --n 5120 --seed 1 $(VARIED_FIELD) --out $(DOTS)/test-varied-field --no-progress
	$(BIN)/synthgen inspect $(DOTS)/train --no-progress
	for seed in 0 1; do \
		if [ -f $(DOTS)/vae-seed$$seed/last.pt ]; then $(BIN)/vae-train --out $(DOTS)/vae-seed$$seed --resume --workers 0; \
		else $(BIN)/vae-train --data $(DOTS)/train --out $(DOTS)/vae-seed$$seed --seed $$seed $(DOTS_VAE); fi || exit 1; \
	done
	$(BIN)/analyze-area-vs-number --checkpoint $(DOTS)/vae-seed0/best.pt $(DOTS)/vae-seed1/best.pt \
		--data $(DOTS)/test --out $(DOTS)/analysis --no-progress
	$(BIN)/analyze-area-vs-number --checkpoint $(DOTS)/vae-seed0/best.pt $(DOTS)/vae-seed1/best.pt \
		--data $(DOTS)/test-varied-field --out $(DOTS)/analysis-varied-field --no-progress
	@if ls $(DOTS)/vae-seed0/checkpoints/epoch-*.pt $(DOTS)/vae-seed1/checkpoints/epoch-*.pt > /dev/null 2>&1; then \
		$(BIN)/analyze-area-vs-number --checkpoint $(DOTS)/vae-seed0/checkpoints/epoch-*.pt \
			$(DOTS)/vae-seed1/checkpoints/epoch-*.pt --data $(DOTS)/test --out $(DOTS)/over-training --no-progress; \
	else echo "The runs in $(DOTS) kept no epochs (made before --save-every): no analysis over training."; fi
	@echo
	@echo "Positive control outputs:"
	@echo "  dot stimuli      $(DOTS)/train, $(DOTS)/test, $(DOTS)/test-varied-field (figures in $(DOTS)/train/inspect/)"
	@echo "  two VAEs         $(DOTS)/vae-seed0, $(DOTS)/vae-seed1"
	@echo "  analysis         $(DOTS)/analysis/report.md (over both runs; each run's report in its own folder)"
	@echo "  varied field     $(DOTS)/analysis-varied-field/report.md (the same runs on arrays whose field varies)"
	@echo "  over training    $(DOTS)/over-training/report.md, runs.png (epochs 0-16 of both runs; 0: untrained)"

# A process per core, 8 at most (pytest-xdist), each test file in one of them: its module fixtures are built once.
# Many tests wait on processes of their own, so 2 processes on 2 cores take about two thirds of the time of one.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto --maxprocesses 8 --dist loadfile

clean:
	rm -rf $(VENV) runs
