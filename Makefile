# d2l-bn: environments, tests and the book.
#
#   make book    build and execute the book (sets everything up first)
#   make test    run all tests (sets everything up first)
#
# The four frameworks cannot share one Python environment (MXNet 1.9.1 needs numpy<1.24), so each
# gets its own venv under .venv/, and one more holds the book and test tools. Each framework venv
# registers a Jupyter kernel `d2l-bn-<framework>` inside the book venv, which runs the notebooks.

PYTHON ?= python3.11
FRAMEWORKS := torch jax tensorflow mxnet
# ACCEL=cuda: environments with the CUDA builds of PyTorch, JAX and TensorFlow, for a Linux host
# with an NVIDIA GPU (README, "On a GPU"). They live in .venv-cuda/, beside the CPU ones, and every
# target given ACCEL=cuda uses them: `make envs ACCEL=cuda`, `make nbval-portable ACCEL=cuda`,
# `make pytest ACCEL=cuda`. MXNet stays the CPU build (its CUDA wheels end at CUDA 11.2).
ACCEL ?= cpu
ifeq ($(ACCEL),cpu)
VENV := .venv
REQUIREMENTS := requirements
else ifeq ($(ACCEL),cuda)
VENV := .venv-cuda
REQUIREMENTS := requirements/cuda
else
$(error ACCEL=$(ACCEL): say ACCEL=cpu (the default) or ACCEL=cuda)
endif
# VERSIONS=colab: environments at Colab's preinstalled releases of PyTorch, JAX and TensorFlow
# (requirements/colab/, locked in requirements/lock/colab-<framework>.txt) in .venv-colab/, to run
# d2l_bn's tests and the portable notebook check on them: `make colab-test` (README, "Colab's
# versions"). MXNet has no Colab. Its book venv (.venv-colab/book, the same lock) holds its kernels.
VERSIONS ?= locked
LOCK_PREFIX :=
ifeq ($(VERSIONS),colab)
ifneq ($(ACCEL),cpu)
$(error VERSIONS=colab runs on the CPU: leave out ACCEL=$(ACCEL))
endif
VENV := .venv-colab
REQUIREMENTS := requirements/colab
LOCK_PREFIX := colab-
FRAMEWORKS := torch jax tensorflow
else ifneq ($(VERSIONS),locked)
$(error VERSIONS=$(VERSIONS): say VERSIONS=locked (the default) or VERSIONS=colab)
endif
# PyPI serves PyTorch's Linux wheels as CUDA builds of several GB; the CPU build that the torch lock
# names (torch==...+cpu) comes from PyTorch's own index. TORCH_INDEX= (empty) leaves pip to its own
# configuration (.ci/run: a machine with a local wheel folder and no route to that index).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The tests read which environments they check from here.
export D2L_BN_VENV := $(abspath $(VENV))
export D2L_BN_ACCEL := $(ACCEL)
BOOK_VENV := $(VENV)/book
# Installs follow the ranges in requirements/<env>.txt, held to the exact versions that CI and the
# committed notebook outputs were made with (requirements/lock/<env>.txt).
PIP_INSTALL = --disable-pip-version-check --progress-bar off -q

# Tests and notebooks read Fashion-MNIST from a local folder when there is one (CI, offline
# machines); without it, d2l_bn downloads and md5-checks the canonical archives.
SHARED_DATA := $(abspath ../shared/data/fashion-mnist)
ifneq ($(wildcard $(SHARED_DATA)/train-images-idx3-ubyte.gz),)
export D2L_BN_DATA ?= $(SHARED_DATA)
endif

# Which tests run in which environment.
# tests/test_parallel_<framework>.py run every multi-device experiment in fresh processes.
TESTS_torch := tests/test_data.py tests/test_training.py tests/test_reference.py tests/test_torch.py \
	tests/test_equivalence_torch.py tests/test_parallel.py tests/test_parallel_torch.py
TESTS_jax := tests/test_jax.py tests/test_equivalence_jax.py tests/test_parallel_jax.py
TESTS_tensorflow := tests/test_tensorflow.py tests/test_equivalence_tensorflow.py \
	tests/test_parallel_tensorflow.py
# The data tests run again with MXNet's numpy 1.23.
TESTS_mxnet := tests/test_data.py tests/test_mxnet.py tests/test_equivalence_mxnet.py \
	tests/test_parallel_mxnet.py
TESTS_book := tests/test_envs.py tests/test_notebooks.py tests/test_stamp.py tests/test_jupyter_markdown.py \
	tests/test_nbval_modes.py tests/test_convention_table.py tests/test_launch_links.py
# tests/test_browser.py needs the built site and Chromium: `make browser-test` runs it.

TIMED := tools/timed
BOOK_PY := $(BOOK_VENV)/bin/python
PIPELINE := $(BOOK_PY) tools/pipeline.py
PYTEST_FLAGS ?= -q
export D2L_BN_NO_SKIPS := 1

.PHONY: all envs resolve colab-test colab-pytest book html notebooks execute stale nbval nbval-portable nbval-run seeds seeds-report test pytest lock clean mathjax browser-deps browser-test browser-test-run serve bench env-bench-d2l $(FRAMEWORKS:%=env-%) env-book $(FRAMEWORKS:%=pytest-%) pytest-book

all: test

envs: env-book $(FRAMEWORKS:%=env-%)

env-book: $(BOOK_VENV)/.installed
$(FRAMEWORKS:%=env-%): env-%: $(VENV)/%/.installed $(VENV)/%/.kernel

$(BOOK_VENV)/.installed: requirements/book.txt requirements/lock/book.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: MXNet needs Python 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(BOOK_VENV)/bin/python || $(PYTHON) -m venv $(BOOK_VENV)
	$(BOOK_VENV)/bin/pip install $(PIP_INSTALL) -r requirements/book.txt -c requirements/lock/book.txt
	touch $@

# A framework venv: its requirements at the locked versions and d2l_bn itself (editable, no deps:
# they came with the requirements). With ACCEL=cuda
# the framework is its CUDA build at the locked release (requirements/cuda/), and everything else
# is held to the same lock, less its CPU-build lines.
$(VENV)/%/.installed: $(REQUIREMENTS)/%.txt requirements/%.txt requirements/common.txt requirements/lock/$(LOCK_PREFIX)%.txt pyproject.toml $(BOOK_VENV)/.installed
	test -x $(VENV)/$*/bin/python || $(PYTHON) -m venv $(VENV)/$*
	grep -v $(CPU_BUILD_LINES) requirements/lock/$(LOCK_PREFIX)$*.txt > $(VENV)/$*/constraints.txt || true
	$(VENV)/$*/bin/pip install $(PIP_INSTALL) $(TORCH_INDEX_FLAGS) -r $(REQUIREMENTS)/$*.txt -c $(VENV)/$*/constraints.txt
	$(VENV)/$*/bin/pip install $(PIP_INSTALL) --no-deps -e .
	touch $@

# The CPU build of the locked PyTorch, from PyTorch's index (only there: the lock names it).
TORCH_INDEX_FLAGS = $(if $(and $(filter torch,$*),$(filter requirements,$(REQUIREMENTS)),$(TORCH_INDEX)),--extra-index-url $(TORCH_INDEX))

# Its kernel, registered in the book venv with the environment that tools/stamp.py declares (which
# is part of every notebook's stamp).
# Then the kernel's own options (tools/pipeline.py, KERNEL_OPTIONS), which ipykernel install
# cannot set.
$(VENV)/%/.kernel: $(VENV)/%/.installed tools/stamp.py tools/pipeline.py
	$(VENV)/$*/bin/python -m ipykernel install --prefix $(abspath $(BOOK_VENV)) \
		--name d2l-bn-$* --display-name "Python 3 (d2l-bn, $*)" $$($(PIPELINE) kernel-env $* --accel $(ACCEL))
	$(PIPELINE) kernel-options $* $(abspath $(BOOK_VENV))/share/jupyter/kernels/d2l-bn-$*/kernel.json
	touch $@

# MathJax 3, served with the site so that equations render offline (Jupyter Book 1 loads it from a
# CDN; MathJax 4 would fetch its fonts from one). Fetched from npm, not committed; _config.yml
# points `local_mathjax_dir` at its es5/ folder, which _ext/local_mathjax.py copies into the build.
MATHJAX_VERSION := 3.2.2
mathjax: $(VENV)/mathjax/.installed-$(MATHJAX_VERSION)
$(VENV)/mathjax/.installed-$(MATHJAX_VERSION):
	npm install --prefix $(VENV)/mathjax --no-save --no-package-lock --no-audit --no-fund \
		--loglevel=error mathjax@$(MATHJAX_VERSION)
	touch $@

# The lock's lines that name a CPU build (grep patterns), which a CUDA environment's constraints
# leave out; tests/test_envs.py reads the same two.
LOCK_CPU_BUILDS := -e '+cpu$$' -e '^tensorflow_cpu=='
ifeq ($(ACCEL),cpu)
CPU_BUILD_LINES := -e '^$$'  # none: the whole lock holds
else
CPU_BUILD_LINES := $(LOCK_CPU_BUILDS)
endif

# Whether the installs resolve from the public indexes alone, as on a user's machine: pip's dry run
# of each environment with this machine's pip configuration and local wheel folders left out,
# downloading only the packages' metadata, from PyPI (and TORCH_INDEX for torch's CPU build).
#   make resolve               the CPU environments of `make envs`
#   make resolve ACCEL=cuda    the CUDA builds of PyTorch, JAX and TensorFlow (from a machine without a GPU)
RESOLVE_ENVS := $(if $(filter cuda,$(ACCEL)),torch jax tensorflow,book $(FRAMEWORKS))
resolve: env-book
	@for env in $(RESOLVE_ENVS); do \
		requirements=$$(test $$env = book && echo requirements || echo $(REQUIREMENTS))/$$env.txt; \
		lock=requirements/lock/$$(test $$env = book || echo "$(LOCK_PREFIX)")$$env.txt; \
		grep -v $(CPU_BUILD_LINES) $$lock > $(VENV)/resolve-$$env-constraints.txt; \
		index=$$(test $$env = torch && test -n "$(TORCH_INDEX)" && test $(REQUIREMENTS) = requirements \
			&& echo "--extra-index-url $(TORCH_INDEX)"); \
		echo "$$requirements $$index:"; \
		env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
			$(BOOK_VENV)/bin/pip install --dry-run --ignore-installed $(PIP_INSTALL) \
			--index-url https://pypi.org/simple $$index --report $(VENV)/resolve-$$env-report.json \
			-r $$requirements -c $(VENV)/resolve-$$env-constraints.txt || exit 1; \
		$(BOOK_PY) -c "import json, sys; names = sorted(p['metadata']['name'] + ' ' + p['metadata']['version'] for p in json.load(open(sys.argv[1]))['install']); print('  would install', len(names), 'packages:', ', '.join(n for n in names if n.split()[0].lower().startswith(('torch', 'jax', 'tensorflow', 'mxnet', 'jupyter-book', 'nvidia-cudnn', 'nvidia-cuda-runtime'))))" $(VENV)/resolve-$$env-report.json; \
	done

# Rewrite the lock files from what the environments hold now (after changing a range: install,
# check, then lock).
lock: envs
	@test "$(ACCEL)" = cpu || { echo "the lock files hold the CPU environments: make lock without ACCEL"; exit 1; }
	$(if $(LOCK_PREFIX),,$(BOOK_VENV)/bin/pip freeze --exclude-editable | grep -v '^d2l' > requirements/lock/book.txt)
	for env in $(FRAMEWORKS); do \
		$(VENV)/$$env/bin/pip freeze --exclude-editable | grep -v '^d2l' > requirements/lock/$(LOCK_PREFIX)$$env.txt; \
	done

# The test command builds the environments, runs the pytest environments, d2l_bn's tests again at
# Colab's versions of PyTorch, JAX and TensorFlow (colab-pytest), then the notebooks,
# TEST_JOBS at a time, the tests and notebooks with TEST_THREADS threads per framework (two jobs of
# one thread each keep a 2-core machine's cores busy without oversubscribing them). The lanes
# shorten the set-up and pytest; the notebooks take about as long either way (CONTRIBUTING.md,
# "CI and its budget").
# `make test TEST_JOBS=1 TEST_THREADS=` runs them one at a time with each framework's threads.
TEST_JOBS ?= 2
TEST_THREADS ?= 1
LANES = -j$(TEST_JOBS) --output-sync=target $(if $(TEST_THREADS),THREADS=$(TEST_THREADS))
test:
	@$(TIMED) "set-up (environments)" $(MAKE) --no-print-directory -j$(TEST_JOBS) \
		--output-sync=target envs
	@$(TIMED) "pytest (all environments)" $(MAKE) --no-print-directory $(LANES) pytest
	@$(TIMED) "pytest at Colab's versions" $(MAKE) --no-print-directory $(LANES) colab-pytest
	@$(TIMED) "notebooks (nbval, all)" $(MAKE) --no-print-directory nbval JOBS=$(TEST_JOBS) \
		$(if $(TEST_THREADS),THREADS=$(TEST_THREADS))
	@$(TIMED) "book build" $(MAKE) --no-print-directory html
	@$(TIMED) "browser test" $(MAKE) --no-print-directory browser-test-run

pytest: $(FRAMEWORKS:%=pytest-%) pytest-book

# TensorFlow outside its kernel as in it (tools/stamp.py, KERNEL_ENV: no C++ log lines, oneDNN on
# for the same numerics); tests/test_envs.py holds the two equal.
pytest-tensorflow seeds bench: export TF_CPP_MIN_LOG_LEVEL := 3
pytest-tensorflow seeds bench: export TF_ENABLE_ONEDNN_OPTS := 1

$(FRAMEWORKS:%=pytest-%) pytest-book: pytest-%:
	@$(TIMED) "pytest in $*" $(VENV)/$*/bin/python -m pytest $(PYTEST_FLAGS) $(TESTS_$*)

book:
	@$(TIMED) "set-up (environments)" $(MAKE) --no-print-directory envs
	@$(TIMED) "notebooks from the sources" $(MAKE) --no-print-directory notebooks
	@$(TIMED) "execute stale notebooks" $(MAKE) --no-print-directory execute
	@$(TIMED) "book build" $(MAKE) --no-print-directory html

# chapters/*.md -> notebooks/<framework>/*.ipynb; a notebook whose inputs are unchanged keeps its
# outputs.
notebooks: env-book
	$(PIPELINE) split

# Run, each in its framework's kernel, the notebooks whose stamp (tools/stamp.py: their cells, the
# d2l_bn code and the locked distributions they import, the kernel's environment) changed since
# they were last executed; the others are left alone, and a run whose outputs are the committed
# ones keeps them and stores only the new stamp. FORCE=1: run all of them. `make stale`: which
# would run.
execute: envs
	$(PIPELINE) execute $(if $(FORCE),--force)
stale: env-book
	@$(PIPELINE) stale

# The website from the executed notebooks: merge each page's frameworks, then build. The build
# executes nothing; warnings are errors.
html: env-book mathjax
	$(PIPELINE) merge
	$(BOOK_VENV)/bin/jupyter-book build -n -W --keep-going -q .

# Debian's Chromium and chromedriver for the browser test; needs root (apt). Playwright's browser
# download cannot work offline, and Selenium is given this driver rather than fetching one.
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromedriver are installed"; \
	else \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

# The built site in headless Chromium, served on 127.0.0.1: synced tabs, launch links, MathJax,
# images, links, no requests to other hosts; screenshots go to _build/screenshots/.
# (`make test` has just built the site: it runs browser-test-run, which does not build it again.)
browser-test: html
	@$(MAKE) --no-print-directory browser-test-run
browser-test-run:
	@$(TIMED) "pytest in the browser" $(BOOK_PY) -m pytest $(PYTEST_FLAGS) tests/test_browser.py

# The built site for authors, on http://127.0.0.1:8000 (SERVE_PORT=... for another port).
SERVE_PORT ?= 8000
serve: html
	$(BOOK_PY) -m http.server --bind 127.0.0.1 --directory _build/html $(SERVE_PORT)

# nbval re-executes every committed notebook in its framework's kernel and compares the outputs
# with the committed ones (tools/nbval-sanitize.cfg lists what may legitimately differ), except
# those of cells tagged `measured`, whose claims are asserts (tools/nbval_modes.py).
#   make nbval                      strict: the default of `make test`
#   make nbval-portable             exact outputs compared, stderr not: another machine, a GPU,
#                                   other versions (NBVAL_KERNEL=python3: the kernel to run them in)
#   make nbval THREADS=1            with one thread per framework: another floating-point path
#   make nbval NOTEBOOKS="notebooks/jax/exercises.ipynb"   only these
#   make nbval JOBS=2 THREADS=1     two notebooks at a time, one thread each (`make test` does)
# A cell may take NBVAL_CELL_TIMEOUT seconds; a kernel that dies fails its cell within seconds.
# The chapter's notebooks, the longest, come first, so that the lanes of JOBS=2 end together.
NOTEBOOK_FILES := $(filter %/batch-norm.ipynb,$(sort $(wildcard notebooks/*/*.ipynb))) \
	$(filter-out %/batch-norm.ipynb,$(sort $(wildcard notebooks/*/*.ipynb)))
JOBS ?= 1
NOTEBOOKS ?= $(NOTEBOOK_FILES)
NBVAL_CELL_TIMEOUT ?= 1800
NBVAL_FLAGS = -q -p no:cacheprovider -p nbval_modes --nbval --nbval-cell-timeout $(NBVAL_CELL_TIMEOUT) \
	--nbval-sanitize-with tools/nbval-sanitize.cfg
# The kernel of a notebook: its framework's (d2l-bn-<framework>), unless NBVAL_KERNEL names one.
NBVAL_KERNEL ?=

ifdef THREADS
# Every framework's thread pools (torch and MXNet use OpenMP; TensorFlow its own two pools; XLA
# Eigen's), inherited by the kernels.
export OMP_NUM_THREADS := $(THREADS)
export MKL_NUM_THREADS := $(THREADS)
export OPENBLAS_NUM_THREADS := $(THREADS)
export TF_NUM_INTRAOP_THREADS := $(THREADS)
export TF_NUM_INTEROP_THREADS := $(THREADS)
ifeq ($(THREADS),1)
export XLA_FLAGS := --xla_cpu_multi_thread_eigen=false
endif
endif

nbval: envs
	@$(MAKE) --no-print-directory nbval-run NBVAL_MODE_FLAGS=

nbval-portable: envs
	@$(MAKE) --no-print-directory nbval-run NBVAL_MODE_FLAGS=--nbval-portable

# One target per notebook, so that make runs JOBS of them at once (each one's output kept
# together) and starts no new one after a failure.
nbval-run:
	@$(MAKE) --no-print-directory -j$(JOBS) --output-sync=target $(NOTEBOOKS:%=nbval-notebook/%)

nbval-notebook/%:
	@framework=$$(basename $$(dirname $*)); \
	kernel=$(if $(NBVAL_KERNEL),$(NBVAL_KERNEL),d2l-bn-$$framework); \
	PYTHONPATH=tools $(TIMED) "nbval $* ($$kernel)" $(BOOK_PY) -m pytest $(NBVAL_FLAGS) \
		$(NBVAL_MODE_FLAGS) $* --nbval-kernel-name $$kernel

# d2l_bn's tests and the portable check of the PyTorch, JAX and TensorFlow notebooks at Colab's
# preinstalled versions (VERSIONS=colab above), in .venv-colab/. `make colab-pytest`: the tests only.
COLAB_NOTEBOOKS := $(filter-out notebooks/mxnet/%,$(NOTEBOOK_FILES))
colab-test: colab-pytest
	@$(TIMED) "notebooks at Colab's versions (portable)" $(MAKE) --no-print-directory VERSIONS=colab \
		nbval-portable NOTEBOOKS="$(COLAB_NOTEBOOKS)"
colab-pytest:
	@$(TIMED) "set-up at Colab's versions" $(MAKE) --no-print-directory VERSIONS=colab envs
	@$(TIMED) "pytest in each at Colab's versions" $(MAKE) --no-print-directory VERSIONS=colab \
		pytest-torch pytest-jax pytest-tensorflow

# The notebooks' training runs over seeds (benchmarks/seeds.py), for their asserts' thresholds:
#   make seeds FRAMEWORK=torch SEEDS="0 1 2" [THREADS=1] [PAGES=devices]; the table: make seeds-report
FRAMEWORK ?= torch
SEEDS ?= 0 1 2
PAGES ?= chapter devices
SEEDS_OUT ?= _build/seeds.jsonl
seeds: envs
	$(VENV)/$(FRAMEWORK)/bin/python benchmarks/seeds.py --framework $(FRAMEWORK) --seeds $(SEEDS) \
		--pages $(PAGES) --out $(SEEDS_OUT)
seeds-report: env-book
	$(BOOK_PY) benchmarks/seeds.py --report $(SEEDS_OUT)

# Benchmarks (benchmarks/README.md): every figure of one table measured in one run, written to
# benchmarks/results/$(BENCH_DEVICE).{json,md} and printed. On a machine with a CUDA GPU the
# PyTorch, JAX and TensorFlow figures are taken there: run `make bench BENCH_DEVICE=gpu`.
BENCH_DEVICE ?= cpu
BENCH_RUN := _build/bench/$(BENCH_DEVICE)
bench: envs env-bench-d2l mathjax
	rm -rf $(BENCH_RUN)
	@for fw in $(FRAMEWORKS); do \
		$(TIMED) "benchmark steps in $$fw" $(VENV)/$$fw/bin/python benchmarks/steps.py \
			--framework $$fw --out $(BENCH_RUN)/$$fw.json || exit 1; \
	done
	@$(TIMED) "benchmark against d2l 1.0.3" $(VENV)/bench-d2l/bin/python benchmarks/d2l_pipeline.py \
		--out $(BENCH_RUN)/d2l_pipeline.json
	@$(TIMED) "benchmark notebooks" $(BOOK_PY) benchmarks/notebooks.py --out $(BENCH_RUN)/notebooks.json
	$(BOOK_PY) benchmarks/report.py $(BENCH_RUN) --device $(BENCH_DEVICE) --command "make bench"

# The original d2l 1.0.3 package needs torchvision, which needs torch 2.14.1 (a CUDA build of about
# 5.5 GB that also runs on the CPU), not the chapter's CPU-only 2.13.0: so it gets an environment of
# its own, used by the benchmark only. d2l goes in without its dependencies (it pins old numpy and
# matplotlib); what it imports is in requirements/bench-d2l.txt.
env-bench-d2l: $(VENV)/bench-d2l/.installed
$(VENV)/bench-d2l/.installed: requirements/bench-d2l.txt requirements/lock/bench-d2l.txt pyproject.toml
	test -x $(VENV)/bench-d2l/bin/python || $(PYTHON) -m venv $(VENV)/bench-d2l
	$(VENV)/bench-d2l/bin/pip install $(PIP_INSTALL) -r requirements/bench-d2l.txt -c requirements/lock/bench-d2l.txt
	$(VENV)/bench-d2l/bin/pip install $(PIP_INSTALL) --no-deps d2l==1.0.3
	$(VENV)/bench-d2l/bin/pip install $(PIP_INSTALL) --no-deps -e .
	touch $@

clean:
	rm -rf _build
