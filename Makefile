# r2i-hpc: `make help` lists the targets. Every target that runs Python depends on `setup`, so a fresh clone
# needs nothing else: `make submit EXP=smoke` and `make test` build the environment themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# moto's S3 server for the s3:// durable-tier tests, in a venv of its own: it needs botocore, whose python-dateutil
# cap conflicts with the main lock (tests/s3_server.py starts it)
S3_SERVER := $(VENV)/s3-server
# The interpreter that builds the venv; the lock was resolved for CPython 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)

EXP ?=
SEEDS ?=
SWEEP ?=
RUN ?=
EPISODES ?=
SEED ?=
ARGS ?=
CLUSTER ?= auto
PROFILE ?=
DETACH ?= 0
FORCE ?= 0
JSON ?= 0
PYTEST_ARGS ?=
BENCH_ARGS ?=
RECIPE ?= tmaze_passive_L20
# zstd store: 8 kinds x 2 trials, up to 5 faults each (time limit: more, second copy: one), ~80 interruptions; then
# an lz4 store, 1 trial a kind; then stores on a local S3 server (the kinds that do not edit store files, 3 faults
# each). ~1.7 h in all on 2 cores -> chaos.json, chaos_lz4.json, chaos_s3.json
CHAOS_ARGS ?= --trials-per-kind 2 --faults-per-trial 5 --max-delay-s 8
# The same faults once the buffer holds 1M steps (64 in-process T-Maze envs fill it in minutes) -> chaos_1m.json
CHAOS_1M_ARGS ?= --kinds preempt,scratch_wipe,sigkill --trials-per-kind 1 --faults-per-trial 3 --max-delay-s 8 \
  --fault-after-steps 1000000 --trial-timeout-s 3600 --root /tmp/r2i-chaos-1m --out bench/results/chaos_1m.json \
  --args "train.steps=1060000 train.prefill=1000000 train.num_envs=64 train.env_processes=false train.train_ratio=2 \
  train.log_every=10000 train.commit_every_min=0.1 replay.chunk=1024 replay.capacity=1100000 cluster.cpus=1 \
  cluster.time_min=60"
# docker/image.env: IMAGE_NAME, BASE_IMAGE, DEBIAN_SUITE, ARCHIVE_DIR (shared with docker/ and singularity/r2i.def)
include docker/image.env
IMAGE_VARIANT ?= cpu

.PHONY: help setup lock test browser test-slurm test-all cluster-up cluster-down submit status report cancel resume eval \
        bench bench-buffer bench-agent bench-loop bench-exactness bench-preempt bench-learn chaos chaos-1m lint docker sif test-container clean

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv from requirements.lock (idempotent; redone when the lock or pyproject changes)

$(STAMP): requirements.lock requirements-s3-server.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is needed, found {sys.version.split()[0]} at {sys.executable}; set PYTHON=/path/to/python3.11"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@test -x $(S3_SERVER)/bin/python || $(PYTHON) -m venv $(S3_SERVER)
	$(S3_SERVER)/bin/python -m pip install -q --disable-pip-version-check -r requirements-s3-server.lock
	@touch $@

lock: ## re-resolve requirements.in into requirements.lock (in a scratch venv)
	rm -rf /tmp/r2i-lock-venv && $(PYTHON) -m venv /tmp/r2i-lock-venv
	/tmp/r2i-lock-venv/bin/pip install -q -r requirements.in
	/tmp/r2i-lock-venv/bin/pip freeze --exclude-editable > requirements.lock

test: setup browser ## fast unit and local end-to-end tests (no cluster, no container)
	$(PY) -m pytest $(PYTEST_ARGS)

browser: ## Chromium for the sweep report's browser test, from Debian's packages where it is missing (root)
	@command -v chromium >/dev/null || bash tests/install-chromium.sh

test-slurm: setup cluster-up ## tests against the real dev Slurm cluster (brings it up first), the chaos CI slice included
	$(PY) -m pytest -m slurm $(PYTEST_ARGS)

cluster-up: ## start the local dev Slurm cluster (root, Debian; idempotent; ~20 s fresh, <1 s when up)
	bash slurm/dev-cluster/up.sh

cluster-down: ## stop the dev cluster daemons this project started (state and logs are kept)
	bash slurm/dev-cluster/down.sh

submit: setup ## launch EXP (SEEDS=0,1 SWEEP=name ARGS="k=v ..." CLUSTER=auto|slurm|local PROFILE=p DETACH=1 FORCE=1)
	@test -n "$(EXP)" || { echo "EXP is required, e.g. make submit EXP=smoke (the error for an unknown EXP lists them)"; exit 2; }
	$(PY) -m orchestrator submit --exp "$(EXP)" $(if $(SEEDS),--seeds "$(SEEDS)") $(if $(SWEEP),--sweep "$(SWEEP)") \
	  --cluster "$(or $(CLUSTER),auto)" $(if $(PROFILE),--profile "$(PROFILE)") $(if $(filter 1,$(DETACH)),--detach) \
	  $(if $(filter 1,$(FORCE)),--force) --args '$(ARGS)'

status: setup ## report every run of SWEEP (JSON=1 for machine output); also writes <sweep>/status.html
	@test -n "$(SWEEP)" || { echo "SWEEP is required, e.g. make status SWEEP=smoke-20261121-1200"; exit 2; }
	$(PY) -m orchestrator status --sweep "$(SWEEP)" $(if $(filter 1,$(JSON)),--json)

report: setup ## curves across seeds per config group + final scores of SWEEP -> <sweep>/report.html and PNGs
	@test -n "$(SWEEP)" || { echo "SWEEP is required, e.g. make report SWEEP=smoke-20261121-1200"; exit 2; }
	$(PY) -m orchestrator report --sweep "$(SWEEP)"

cancel: setup ## cancel every queued or running job of SWEEP
	@test -n "$(SWEEP)" || { echo "SWEEP is required"; exit 2; }
	$(PY) -m orchestrator cancel --sweep "$(SWEEP)"

resume: setup ## resubmit the runs of SWEEP that are neither finished nor queued (DETACH=1 locally, FORCE=1)
	@test -n "$(SWEEP)" || { echo "SWEEP is required"; exit 2; }
	$(PY) -m orchestrator resume --sweep "$(SWEEP)" $(if $(filter 1,$(DETACH)),--detach) $(if $(filter 1,$(FORCE)),--force)

eval: setup ## evaluate the newest commit of RUN (a run folder; EPISODES=n SEED=s), read-only -> <run>/eval/
	@test -n "$(RUN)" || { echo "RUN is required, e.g. make eval RUN=runs/smoke-20261121-1200/s0"; exit 2; }
	$(PY) -m orchestrator eval --run "$(RUN)" $(if $(EPISODES),--episodes "$(EPISODES)") $(if $(SEED),--seed "$(SEED)")

bench: bench-buffer bench-agent bench-loop ## all benchmarks (JSON under bench/results/)

bench-buffer: setup ## replay buffer benchmark -> bench/results/buffer.json
	$(PY) -m bench.bench_buffer $(BENCH_ARGS)

bench-agent: setup ## agent train/act benchmark -> bench/results/agent.json
	$(PY) -m bench.bench_agent $(BENCH_ARGS)

bench-loop: setup ## env-only, learner-only and full-loop env steps/s side by side (schedule check, CPU, GPU) -> bench/results/loop.json
	$(PY) -m bench.bench_loop $(BENCH_ARGS)

bench-exactness: setup ## two processes give the same train-step bits, a Memory Maze stop/resume changes none -> bench/results/exactness.json
	$(PY) -m bench.exactness $(BENCH_ARGS)

bench-preempt: setup ## what one preemption costs with the mmaze agent and Memory Maze envs (stop commit, restore, recompile) -> bench/results/preempt.json
	$(PY) -m bench.bench_preempt $(BENCH_ARGS)

bench-learn: setup ## learning curve of RECIPE (tmaze_passive_L20 | popgym_repeat_previous_easy) on CPU -> bench/results/learn_<RECIPE>.json/png; SEEDS=0,1,2,3,4: one run per seed, judged together -> learn_<RECIPE>_seeds.json/png
	$(if $(SEEDS),$(PY) -m bench.learn_seeds --recipe $(RECIPE) --seeds $(SEEDS) $(BENCH_ARGS),$(PY) -m bench.learn --recipe $(RECIPE) $(BENCH_ARGS))

chaos: setup cluster-up ## interrupt smoke runs on the dev cluster with every fault kind (zstd, lz4 and S3 stores), compare to an uninterrupted run -> bench/results/chaos*.json
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)
	$(PY) -m bench.chaos $(CHAOS_ARGS) --root /tmp/r2i-chaos-zstd
	$(PY) -m bench.chaos $(CHAOS_ARGS) --trials-per-kind 1 --also replay.codec=lz4 --root /tmp/r2i-chaos-lz4 \
	  --out bench/results/chaos_lz4.json
	$(PY) -m bench.chaos $(CHAOS_ARGS) --trials-per-kind 1 --faults-per-trial 3 --s3 --root /tmp/r2i-chaos-s3 \
	  --kinds preempt,requeue,sigkill,scratch_wipe,second_writer --out bench/results/chaos_s3.json

chaos-1m: setup cluster-up ## the chaos faults at a 1M-step buffer (restore cost vs buffer size) -> bench/results/chaos_1m.json
	$(PY) -m bench.chaos $(CHAOS_1M_ARGS)

lint: setup ## ruff over the packages, tests and benchmarks
	$(VENV)/bin/ruff check orchestrator agent buffer tests bench singularity/podman-shim

docker: ## build the image (IMAGE_VARIANT=cpu|gpu; docker if an engine runs, else podman) -> build/r2i-hpc-<variant>.tar
	bash docker/build.sh --variant $(IMAGE_VARIANT)

sif: ## build/r2i-hpc-<variant>.sif from that archive with apptainer/singularity (clear error where absent)
	bash singularity/build-sif.sh --variant $(IMAGE_VARIANT)

test-container: setup ## build the CPU image with podman, run the container tests in it (+1 dev-cluster job)
	bash docker/build-podman.sh --variant cpu
	R2I_TEST_IMAGE=$(IMAGE_NAME):cpu $(PY) -m pytest -m container tests/containers $(PYTEST_ARGS)

clean: ## remove caches and bench scratch (keeps .venv, runs and the dev cluster state)
	rm -rf .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
