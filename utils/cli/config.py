"""Every flag of every script, defined once, in groups; the scripts' flag sets are built from them.

Groups: data, model, recipe (the paper's training recipe), run (seed, resume, outputs of a
training run), device (device, precision, compilation), stage-1 outputs, stage-2 scoring, stage-3
selection, and the grid of ``reproduce_table.py``, which forwards every stage flag (stage-1 recipe
flags under a ``score_`` prefix). A flag's record gives its kind, default and one line of help;
cross-flag checks run in each set's ``check``. Nothing here imports torch.
"""
from __future__ import annotations

import os

from utils import cpu_kernels, paths
from utils.cli.flags import Flag, FlagSet, Settings
from utils.cli.kinds import Bool, Choice, CompileKind, DeviceKind, Float, Int, ListOf, Name, Optional, Path, Str
from utils.errors import require
from utils.files.atomic import check_new_output
from utils.paths import check_safe_name
from utils.methods import registry as methods
from utils.core.selection import ORDERS, budgets_of
from utils.train.options import COLLECT_PRECISIONS, PRECISIONS, check_model

MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_WORKERS = 512
MAX_SEED = 2**63 - 1


def _datasets() -> tuple[str, ...]:
    from utils.data.datasets import DATASETS
    return tuple(DATASETS)


# ----------------------------------------------------------------------------- groups

DATA = [
    Flag("data_path", Path(), paths.DATA_DIR,
         "folder holding cifar/ (torchvision's layout) or imagenet/{train,val}/<class>/<image>"),
    Flag("dataset", Choice(_datasets), "CIFAR100", "CIFAR10, CIFAR100, ImageNet (any ImageFolder) or digits "
         "(embedded, no download)"),
    Flag("workers", Int(0, MAX_WORKERS), 4, "DataLoader worker processes (ImageFolder datasets only)"),
    Flag("download", Bool(), True, "download CIFAR through torchvision when it is missing"),
]
VAL_SPLIT = Flag("val_split_ratio", Optional(Float(0, 1, lo_open=True, hi_open=True)), None,
                 "share of each class held out for validation (default 0.1; ImageNet 0.01)")
SKIP_BAD_IMAGES = Flag("skip_bad_images", Bool(), False, "ImageFolder datasets: leave out the files that cannot be "
                       "read as images (listed), instead of refusing the run")
DECODE = Flag("decode", Choice(("cpu", "gpu")), "cpu",
              "ImageFolder JPEG decoding: cpu (DataLoader workers) or gpu (nvJPEG on the training GPU)")
MODEL_ARCH = Flag("model_arch", Str(), "resnet18", "model: a name of the registry (torchvision names for ImageNet)")

RECIPE = [
    Flag("epochs", Int(1, MAX_EPOCHS), 164, "epochs to train"),
    Flag("start_epoch", Int(0, MAX_EPOCHS), 0, "the paper code's flag; only 0 (a resumed run continues from "
         "the epoch stored in its checkpoint)"),
    Flag("batch_size", Int(1, MAX_BATCH), 128, "training batch size (per process under torchrun)"),
    Flag("test_batch_size", Int(1, MAX_BATCH), 256, "batch size of every evaluation pass"),
    Flag("learning_rate", Float(0, 100, lo_open=True), 0.1, "initial SGD learning rate"),
    Flag("momentum", Float(0, 1, hi_open=True), 0.9, "SGD momentum"),
    Flag("weight_decay", Float(0, 1), 5e-4, "SGD weight decay"),
    Flag("disable_nesterov", Bool(), False, "plain momentum instead of Nesterov"),
    Flag("schedule", ListOf(Int(0, MAX_EPOCHS)), [81, 121], "epochs after which the learning rate is "
         "multiplied by gamma"),
    Flag("gamma", Float(0, 1e6, lo_open=True), 0.1, "learning-rate decay factor"),
    Flag("augment", Bool(), True, "augment every training batch: random crop, and horizontal flip where the "
         "dataset allows it (false: the images as they are)"),
]

RUN = [
    Flag("checkpoint_path", Path(), paths.CHECKPOINT_DIR, "folder of *_last.pth (every epoch) and *_best.pth "
         "(best test accuracy)"),
    Flag("logpath", Path(), paths.LOG_DIR, "folder of the per-epoch CSV log"),
    Flag("resume_path", Path(), "", "a *_last.pth to continue (or, with --evaluate_only, any checkpoint, the "
         "paper code's included)"),
    Flag("manual_seed", Int(0, MAX_SEED), 1234, "seed of the split, the initialisation and every epoch's batches"),
    Flag("evaluate_only", Bool(), False, "evaluate the checkpoint --resume_path on the test set and exit"),
]

DEVICE = [
    Flag("device", DeviceKind(), "auto", "auto, cpu, cuda or cuda:N"),
    Flag("precision", Choice(PRECISIONS), "auto", "training precision: auto (bf16 on CUDA, fp32 on CPU), "
         "bf16, fp16 or fp32"),
    Flag("compile", CompileKind(), False, "torch.compile the train and eval steps: false, true (CUDA graphs "
         "on one GPU) or a mode such as max-autotune-no-cudagraphs"),
]
COLLECT_PRECISION = Flag("collect_precision", Choice(COLLECT_PRECISIONS), "fp32",
                         "precision of the per-example losses and features: fp32 (TF32 off; default), same "
                         "(the training precision), bf16 or fp16")
OVERWRITE = Flag("overwrite", Bool(), False, "replace this run's existing outputs")
THREADS = Flag("threads", Int(0, 4096), 0, "CPU threads of torch (0: one for a model under a million parameters, "
               "where more threads only contend, else torch's default; OMP_NUM_THREADS is respected)")
CPU_KERNELS = Flag("cpu_kernels", Choice(cpu_kernels.MODES), cpu_kernels.DEFAULT_MODE, "portable (the same numbers "
                   "on any x86-64 CPU with AVX2, Intel or AMD) or native (the fastest kernels of this CPU)")
FIT_THRESHOLD = Flag("fit_threshold", Float(0, 100), 90.0, "accuracy (%) on its own coreset below which a trained "
                     "model is flagged as not fit (converged false)")

STAGE1_OUTPUTS = [
    Flag("scores_dir", Path(), paths.SCORES_DIR, "folder of the loss file"),
    Flag("splits_dir", Path(), paths.SPLITS_DIR, "folder of the split file"),
    Flag("snapshot_epochs", ListOf(Int(1, MAX_EPOCHS), unique=True), [40], "also keep the model weights after "
         "these epochs ({checkpoint_path}/{run}_epoch{E}.pth) for the model-based methods of stage 2"),
    Flag("trajectories", Choice(("full", "sums")), "full", "full: every loss of every epoch (all methods); "
         "sums: only CLD's running sums per example (O(N) memory and disk)"),
    Flag("stop_when_stable", Optional(Float(0, 1, lo_open=True)), None, "stop once CLD's per-class top-k coreset "
         "overlaps the one --stability_every epochs earlier with a mean Jaccard of at least this, at two checks in a "
         "row (off by default; the learning-rate schedule is not rescaled)"),
    Flag("stability_every", Int(1, MAX_EPOCHS), 5, "--stop_when_stable: epochs between checks"),
    Flag("stability_k", Float(0, MAX_BATCH * 64, lo_open=True), 0.1, "--stop_when_stable: the coreset compared, "
         "k per class (an integer) or a fraction of each class (below 1)"),
]

# The selection of a coreset: stage 3 trains on it, stage 2 exports it (--export_coreset).
SAMPLES_PER_CLASS = Flag("samples_per_class", Optional(Int(1, MAX_BATCH * 64)), None, "budget: k examples of every "
                         "class (default: the paper's 100)")
FRACTION = Flag("fraction", Optional(Float(0, 1, lo_open=True)), None, "budget: round(fraction x pool) of every "
                "class, instead of k")
ORDER = Flag("order", Choice(ORDERS), "top", "top (default), zero (smallest |score|: the paper's near-zero CLD), "
             "bottom, middle (median rank), random (uniform, seeded) or ccs")
CCS_BETA = Flag("ccs_beta", Float(0, 1, hi_open=True), 0.0, "ccs: fraction of each class's hardest examples dropped "
                "first")

SCORING = [
    Flag("loss_path", Path(), "", "loss (or sums) file of stage 1; default "
         "Scores/{dataset}_{model_arch}_seed1234_losses.pickle"),
    Flag("dataset", Optional(Choice(_datasets)), None, "the loss file's dataset: fills in for legacy files that "
         "record none, and names the file of no --loss_path (default CIFAR100 there); refused when the file records "
         "another"),
    Flag("model_arch", Optional(Str()), None, "the loss file's model: fills in for legacy files that record none, "
         "and names the file of no --loss_path (default resnet18 there); refused when the file records another"),
    Flag("split_path", Path(), "", "split file of a legacy loss file of the paper's code (required for those)"),
    Flag("method", Choice(methods.names), "cld", f"scoring method: {', '.join(methods.names())} (docs/methods.md)"),
    Flag("output_path", Path(), "", "score file to write; default beside the loss file, "
         "{METHOD}_{dataset}_{arch}_seed{seed}_scores.pickle"),
    Flag("export_coreset", Path(), "", "also write the coreset to keep, its ids ascending: a .npy of int64 ids "
         "(dataset indices, or a recorded file's integer ids) or a .csv with the header id (any ids); needs a budget"),
    SAMPLES_PER_CLASS.with_default(None, "--export_coreset: k examples of every class (or group)"),
    FRACTION.with_default(None, "--export_coreset: round(fraction x pool) of every class (or group), at least 1"),
    ORDER.with_default("top", "--export_coreset: what to keep of each ranking, as stage 3's --order (random and ccs "
                       "draw with the score's seed)"),
    CCS_BETA.with_default(0.0, "--export_coreset --order ccs: fraction of each class's hardest examples dropped first"),
    Flag("stability", Bool(), False, "trajectory methods: also compare the ranking from the first E recorded epochs "
         "with the ranking from all of them, for E on --stability_epochs (table, <score file>_stability.csv)"),
    Flag("stability_epochs", ListOf(Int(1, MAX_EPOCHS), unique=True), [], "--stability: the E to compare (default "
         "every 10% of the recorded epochs)"),
    Flag("stability_k", ListOf(Float(0, MAX_BATCH * 64, lo_open=True), unique=True), [0.1], "--stability: the "
         "coresets compared, k per class (integers) or fractions of each class (below 1)"),
    Flag("figure", Path(), "", "also draw a PNG: with --stability its curve; else, for cld, the overview figure of "
         "one class (its highest- and lowest-CLD images and their loss trajectories, and the CLD histograms)"),
    Flag("figure_class", Optional(Int(0, 10**6)), None, "--figure: the class shown (default the class whose CLD "
         "spreads widest)"),
    Flag("first_epochs", Int(0, MAX_EPOCHS), 0, "trajectory methods: score only the first N recorded epochs "
         "(0 = all)"),
    Flag("epoch_stride", Int(1, MAX_EPOCHS), 1, "trajectory methods: then keep every s-th of those epochs"),
    Flag("el2n_epochs", Int(1, MAX_EPOCHS), 20, "el2n: average over the first this-many used epochs"),
    Flag("dyn_unc_window", Int(2, MAX_EPOCHS), 10, "dyn_unc: window of consecutive epochs"),
    Flag("seed", Optional(Int(0, MAX_SEED)), None, "random, kcenter, contextual_diversity: seed of the draw; "
         "default the loss file's manual_seed"),
    Flag("snapshot_epoch", Optional(Int(1, MAX_EPOCHS)), None, "model methods: the weights after this epoch; "
         "default the one snapshot the run kept (of several, the 40-epoch one), else the final weights"),
    Flag("save_features", Path(), "", "model methods: also write the matrix the method used to this .npz"),
    Flag("cal_neighbors", Int(1, 1000), 10, "cal: nearest neighbours per example"),
    Flag("deepfool_max_iter", Int(1, 10_000), 50, "deepfool: iterations at most"),
    Flag("glister_eta", Optional(Float(0, 100, lo_open=True)), None, "glister: step size of the Taylor "
         "estimate; default the run's learning rate"),
    Flag("budgets", ListOf(Float(0, MAX_BATCH * 64, lo_open=True), unique=True), [], "craig, gradmatch: the "
         "budgets whose per-example weights to record: k per class (an integer) or a fraction of each class (below "
         "1); default the k of the printed stage-3 command"),
    Flag("selection_model", Choice(("snapshot", "deepcore")), "snapshot", "model methods: what the loss file's run "
         "is, recorded in the score file: snapshot (the trajectory run itself) or deepcore (a separate run of "
         "DeepCore's selection recipe: constant learning rate, no augmentation)"),
    Flag("gradient_target", Choice(("val", "train")), "val", "gradmatch, glister: match the class's held-out "
         "validation split (val, the methods' definition) or its training split (train, what DeepCore's run does)"),
    Flag("data_path", Path(), "", "model methods and --figure: the data folder; default the one stage 1 recorded"),
    Flag("device", DeviceKind(), "auto", "model methods: auto, cpu, cuda or cuda:N"),
    THREADS,
    CPU_KERNELS,
    COLLECT_PRECISION,
    OVERWRITE.with_default(False, "replace an existing score file"),
]

SELECTION = [
    Flag("score_path", Path(), "", "a score file of stage 2 (or of the paper's code); default "
         "Scores/CLD_{dataset}_{model_arch}_seed{manual_seed}_scores.pickle"),
    SAMPLES_PER_CLASS,
    Flag("topk_per_class", Optional(Int(1, MAX_BATCH * 64)), None, "the same budget under the paper code's name"),
    FRACTION,
    ORDER,
    CCS_BETA,
    Flag("allow_missing_classes", Bool(), False, "train on the classes the score file ranks even if it lacks "
         "some of the dataset's"),
    Flag("weighted", Bool(), True, "train a CRAIG or GradMatch coreset with its per-example weights (a weighted mean "
         "of the losses, as DeepCore does; GradMatch keeps its nonzero-weight examples); false: unweighted"),
]
STAGE3_OUTPUTS = [
    Flag("results_dir", Path(), paths.RESULTS_DIR, "where runs/<name>.json and results.csv go"),
    Flag("name", Name(), "", "the run's name; default "
         "{dataset}_{model_arch}_coreset_{method}_{order}_k{k}_seed{seed}"),
]


# ----------------------------------------------------------------------------- checks

def check_schedule(schedule: list, flag: str = "--schedule") -> None:
    """Milestones strictly increasing, each at least 1 (MultiStepLR would apply a repeated one twice
    and take an unordered list as given)."""
    require(all(m >= 1 for m in schedule), f"{flag} takes epochs of 1 or more, got {schedule}")
    require(all(a < b for a, b in zip(schedule, schedule[1:])), f"{flag} must be strictly increasing (each "
            f"epoch once, in order), got {schedule}")


def _check_training(s: Settings) -> Settings:
    check_schedule(s.schedule)
    require(s.start_epoch == 0, f"--start_epoch {s.start_epoch} is not supported: a run resumed with "
            "--resume_path continues from the epoch stored in its checkpoint, and a fresh run starts at 0 "
            "(use --epochs to train for fewer epochs)")
    if s.evaluate_only:
        require(bool(s.resume_path), "--evaluate_only needs --resume_path with the checkpoint to evaluate")
    require(s.momentum > 0 or s.disable_nesterov,
            f"momentum must lie in [0, 1) and be positive with Nesterov, got {s.momentum}")
    return s


def _check_stage1(s: Settings) -> Settings:
    s = _check_training(s)
    budgets_of([s.stability_k], "--stability_k")
    check_model(s.model_arch, s.dataset)
    return s


def _check_stage2(s: Settings) -> Settings:
    method = methods.get(s.method)
    budgets_of(s.budgets)
    budgets_of(s.stability_k, "--stability_k")
    require(not s.stability or (s.first_epochs == 0 and s.epoch_stride == 1), "--stability compares the first E "
            "recorded epochs with all of them; give it without --first_epochs and --epoch_stride")
    if s.model_arch is not None:
        check_safe_name(s.model_arch, "--model_arch")
    # a flag that shapes an output not asked for would be ignored without a word
    require(s.figure or s.figure_class is None, "--figure_class chooses the class --figure draws; give --figure too")
    require(s.stability or not s.stability_epochs, "--stability_epochs chooses the epochs of --stability; give "
            "--stability too")
    if s.stability:
        require(method.family == "trajectory", f"--stability compares rankings from fewer recorded epochs; "
                f"{method.name} scores from model weights, not from the trajectories")
    if s.figure:
        require(s.figure.endswith(".png"), f"--figure must name a .png file, got {s.figure!r}")
        require(s.stability or method.name == "cld", "--figure draws CLD's overview figure (--method cld) or, with "
                "--stability, the stability curve of a trajectory method")
    if s.save_features:
        require(method.uses_model, f"--save_features exports the matrix of a model method; {method.name} reads "
                "the loss trajectories (they are in the loss file already)")
        require(s.save_features.endswith(".npz"), f"--save_features must name a .npz file, got {s.save_features!r}")
    for name in (f.name for f in STAGE2 if methods.readers(f.name) and f.name not in method.options):
        require(s[name] == STAGE2[name].default, f"--{name} is an option of {methods.readers_words(name)}; "
                f"{method.name} does not read it")
    _check_export(s)
    return s.replace(method=method.name)


def _check_export(s: Settings) -> None:
    """--export_coreset and the selection flags that size it come together (a budget alone would
    silently do nothing)."""
    if not s.export_coreset:
        require(s.samples_per_class is None and s.fraction is None and s.order == "top" and s.ccs_beta == 0,
                "--samples_per_class, --fraction, --order and --ccs_beta choose the coreset that --export_coreset "
                "writes; give --export_coreset PATH (.npy or .csv) too")
        return
    require(s.export_coreset.endswith((".npy", ".csv")), "--export_coreset must name a .npy file (integer ids) or "
            f"a .csv file (any ids), got {s.export_coreset!r}")
    require((s.samples_per_class is None) != (s.fraction is None), "--export_coreset needs one budget: "
            "--samples_per_class K or --fraction F")


def _check_stage3(s: Settings) -> Settings:
    s = _check_training(s)
    k = s.samples_per_class
    if s.topk_per_class is not None:
        require(k is None or k == s.topk_per_class,
                "--samples_per_class and --topk_per_class are the same flag; give one of them")
        k = s.topk_per_class
    require(k is None or s.fraction is None, "give one budget: --samples_per_class K (or --topk_per_class K) "
            "or --fraction F")
    return s.replace(samples_per_class=k, topk_per_class=None)


STAGE1 = FlagSet([*DATA[:2], MODEL_ARCH, DATA[2], *RECIPE[:3], RECIPE[3], VAL_SPLIT, *RECIPE[4:], *RUN,
                  *DEVICE, THREADS, CPU_KERNELS, COLLECT_PRECISION, *STAGE1_OUTPUTS, DATA[3], DECODE, SKIP_BAD_IMAGES,
                  OVERWRITE.with_default(False, "replace an existing loss file, or start an existing run over")],
                 check=_check_stage1)

STAGE2 = FlagSet(SCORING, check=_check_stage2)

STAGE3 = FlagSet([*SELECTION, DATA[0], DATA[1].with_default(None, "dataset to train on; default the score "
                                                             "file's (the paper's CIFAR100 for its files)"),
                  MODEL_ARCH.with_default(None, "model to train; default the model that produced the scores "
                                                "(another one: the paper's transfer experiment)"),
                  DATA[2], *RECIPE, *RUN, *DEVICE, THREADS, CPU_KERNELS, *STAGE3_OUTPUTS, FIT_THRESHOLD, DATA[3], DECODE,
                  SKIP_BAD_IMAGES,
                  OVERWRITE.with_default(False, "replace the results and checkpoints of an earlier run of this "
                                                "name")],
                 check=_check_stage3)


# ----------------------------------------------------------------------------- the grid

def _score_flag(flag: Flag) -> Flag:
    """The grid's ``score_{name}``: stage 1's value of a recipe flag, by default stage 3's."""
    return Flag(f"score_{flag.name}", Optional(flag.kind), None,
                f"stage 1's {flag.name}; default the same as --{flag.name}")


STAGE1_RECIPE_FLAGS = [f for f in RECIPE if f.name != "start_epoch"]
STAGE1_RECIPE = [f.name for f in STAGE1_RECIPE_FLAGS]
GRID_OWN = [
    DATA[1],
    Flag("score_model_arch", ListOf(Str(), unique=True), ["resnet18"], "model(s) trained in stage 1 to record "
         "the trajectories (and the model methods' snapshots)"),
    Flag("model_archs", ListOf(Str(), unique=True), ["resnet18"], "models trained on the coresets in stage 3 "
         "(another model than the scoring one: the paper's transfer experiment)"),
    Flag("methods", ListOf(Choice(methods.names), unique=True), ["cld"], "scoring methods of stage 2"),
    Flag("orders", ListOf(Choice(ORDERS), unique=True), ["top", "random"], "what stage 3 keeps of each "
         "ranking; order random runs once, over the first method's scores"),
    Flag("method_orders", ListOf(Str(), unique=True), [], "more orders for single methods, as method:order "
         "(e.g. cld:zero,cld:bottom for the paper's Figure 1 beside a comparison of top coresets)"),
    Flag("samples_per_class", Optional(ListOf(Int(1, MAX_BATCH * 64), unique=True)), None,
         "budgets k per class (give this or --fractions)"),
    Flag("fractions", Optional(ListOf(Float(0, 1, lo_open=True), unique=True)), None,
         "budgets as a share of each class (give this or --samples_per_class)"),
    Flag("seeds", ListOf(Int(0, MAX_SEED), unique=True), [1234], "stage-3 seeds; the table averages over them"),
    Flag("score_seed", Optional(Int(0, MAX_SEED)), None, "seed of stage 1 (and of the scores); default the first "
         "of --seeds"),
    Flag("selection_model", Choice(("snapshot", "deepcore")), "snapshot", "the weights the model-based methods "
         "score from: snapshot (a weight snapshot of the stage-1 trajectory run, --snapshot_epochs) or deepcore (one "
         "more stage-1 run with DeepCore's selection recipe: SGD lr 0.1, constant, no augmentation; its final weights)"),
    Flag("selection_epochs", Int(1, MAX_EPOCHS), 40, "--selection_model deepcore: epochs of that run (DeepCore's "
         "selection_epochs)"),
]
GRID_RUNNING = [
    Flag("tag", Name(), "", "appended to every stage-3 run name, to keep grids with other recipes apart"),
    Flag("launcher", Str(), "python", "how stages 1 and 3 start: python (inside this process) or e.g. "
         "'torchrun --nproc_per_node 8' (each as that command)"),
    Flag("jobs", Int(1, 1024), 1, "stage-3 runs at once, each in its own process (on CUDA, run i on GPU i mod the "
         "number of GPUs)"),
    Flag("dry_run", Bool(), False, "print the commands that would run now, and run nothing"),
    Flag("emit_script", Path(), "", "write every command of the grid to this bash script, and run nothing"),
]


def _by_name(*groups) -> dict[str, Flag]:
    return {f.name: f for group in groups for f in group}


_ALL = _by_name(STAGE1, STAGE2, STAGE3)
# Stage flags the grid forwards under the same name (the rest it sets itself, per step).
GRID_FORWARDED = [
    *STAGE1_RECIPE_FLAGS,
    *(_ALL[n] for n in ("data_path", "workers", "download", "decode", "skip_bad_images", "val_split_ratio", "device", "precision",
                        "compile", "threads", "cpu_kernels", "fit_threshold", "collect_precision", "snapshot_epochs", "trajectories", "first_epochs",
                        "epoch_stride", "el2n_epochs", "dyn_unc_window", "snapshot_epoch", "cal_neighbors",
                        "deepfool_max_iter", "glister_eta", "gradient_target", "ccs_beta", "weighted",
                        "allow_missing_classes", "scores_dir",
                        "splits_dir", "checkpoint_path", "logpath", "results_dir")),
]
# Stage flags the grid sets itself for each step (never forwarded from its own flags).
GRID_SETS = {
    # The grid leaves stage 1's stop rule and stage 2's stability table, figure and coreset export at
    # their defaults (it draws its own pictures, and stage 3 selects its coresets).
    1: ("model_arch", "manual_seed", "resume_path", "evaluate_only", "overwrite", "start_epoch", "dataset",
        "stop_when_stable", "stability_every", "stability_k", *STAGE1_RECIPE),
    2: ("loss_path", "dataset", "model_arch", "split_path", "method", "output_path", "seed", "save_features",
        "budgets", "selection_model", "stability", "stability_epochs", "stability_k", "figure", "figure_class",
        "overwrite", "data_path", "export_coreset", "samples_per_class", "fraction", "order", "ccs_beta"),
    3: ("score_path", "samples_per_class", "topk_per_class", "fraction", "order", "dataset", "model_arch",
        "manual_seed", "name", "resume_path", "evaluate_only", "overwrite", "start_epoch"),
}


def _check_grid(s: Settings) -> Settings:
    for key in ("score_model_arch", "model_archs", "methods", "orders", "seeds"):
        require(len(s[key]) > 0, f"--{key} needs at least one value")
    if s.emit_script:  # before any planning; the write itself also refuses a name taken meanwhile
        require(not os.path.lexists(s.emit_script), f"--emit_script {s.emit_script} already exists; a script is "
                "never replaced: remove it, or choose another name")
        check_new_output(s.emit_script, False, "--emit_script")
    require((s.samples_per_class is None) != (s.fractions is None),
            "give the subset sizes as --samples_per_class K1,K2,... or as --fractions F1,F2,... (one of them)")
    require(bool(s.samples_per_class or s.fractions), "the budget list is empty")
    names = [methods.get(m).name for m in s.methods]
    extra = []
    for pair in s.method_orders:
        method, _, order = pair.partition(":")
        require(order in ORDERS, f"--method_orders takes method:order pairs with an order of {', '.join(ORDERS)}, "
                f"got {pair!r}")
        name = methods.get(method).name
        require(name in names, f"--method_orders names {method!r}, which is not in --methods")
        require(order != "random" or name == names[0], f"--method_orders {pair}: order random runs once, over the "
                f"first method's file ({names[0]}); give it with --orders")
        extra.append(f"{name}:{order}")
    if s.trajectories == "sums":
        require(names == ["cld"], "--trajectories sums keeps CLD's sums only; "
                "the other methods need the full trajectories (--methods cld, or --trajectories full)")
    check_schedule(s.schedule)
    if s.score_schedule is not None:
        check_schedule(s.score_schedule, "--score_schedule")
    epochs = s.score_epochs if s.score_epochs is not None else s.epochs
    require(epochs >= 3, f"stage 1 must record at least 3 epochs (CLD correlates 2+ loss differences), got {epochs}")
    require(s.launcher.strip() != "", "--launcher must be a command such as python or torchrun")
    # Last: the model registry imports torch, which the cheaper checks above need not wait for.
    for arch in s.score_model_arch + s.model_archs:
        check_model(arch, s.dataset)
    return s.replace(methods=names, method_orders=extra, score_seed=s.seeds[0] if s.score_seed is None else s.score_seed)


GRID = FlagSet([*GRID_OWN, *(_score_flag(f) for f in STAGE1_RECIPE_FLAGS), *GRID_FORWARDED,
                *GRID_RUNNING], check=_check_grid)
