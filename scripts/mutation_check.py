"""Plant one small bug at a time in a copy of the repository; the fast test tier must catch each.

Each mutation is (file, exact original snippet, replacement, description): a changed
operator, constant or call that would silently change what the project computes or
reports. They are applied one at a time to a temporary copy of the repository (never to
the working tree), and `pytest -m "not slow" -x -q` runs against the copy: first the test
file most likely to catch the mutation, then, if it passes, the whole fast tier. A
mutation that no test catches is a survivor, and the check fails. A snippet that is no
longer in its file (or is there more than once) is an error, so that drift in the source
is noticed rather than silently skipping a mutation.

Mutations that are equivalent by design (they change no number the project reports) are
listed in EQUIVALENT with the reason, and not run.

    python scripts/mutation_check.py               # every mutation, after a clean baseline run
    python scripts/mutation_check.py --only relu-missing-preact-basic nesterov-dropped
    python scripts/mutation_check.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST_TIER = ["-m", "not slow", "-x", "-q", "-p", "no:cacheprovider", "--ignore=tests/test_browser.py"]
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    replacement: str
    description: str
    first: str = ""  # the test file most likely to catch it, run on its own first (speed only)


M, D, R, T, S = ("tests/test_science_models.py", "tests/test_science_data.py", "tests/test_recipes.py",
                 "tests/test_science_training.py", "tests/test_science_records.py")
E, TT, C, SC = "tests/test_engine.py", "tests/test_train.py", "tests/test_campaign.py", "tests/test_selfcheck.py"
STACKED = "tests/test_stacked.py"
U = "tests/test_untrusted_records.py"

MUTATIONS = [
    # ---- networks
    Mutation("relu-missing-preact-basic", "reproresnet/models.py",
             "out = F.relu(self.bn2(out))", "out = self.bn2(out)",
             "pre-activation basic unit loses its second ReLU", M),
    Mutation("relu-missing-preact-bottleneck", "reproresnet/models.py",
             "out = self.conv3(F.relu(self.bn3(out)))", "out = self.conv3(self.bn3(out))",
             "pre-activation bottleneck loses its third ReLU", M),
    Mutation("dropout-moved-wide", "reproresnet/models.py",
             "out = self.dropout(out)\n        out = self.conv2(out)",
             "out = self.conv2(out)\n        out = self.dropout(out)",
             "wide unit drops out after its second conv instead of between the convs", M),
    Mutation("dropout-rate-halved", "reproresnet/models.py",
             "nn.Dropout(dropout) if", "nn.Dropout(dropout / 2) if",
             "wide unit drops out at half the rate asked for", M),
    Mutation("shortcut-reads-raw-input", "reproresnet/models.py",
             'changes_shape and shortcut != "input_projection"', 'changes_shape and shortcut == "input_projection"',
             "reshaping pre-activation units project the raw input instead of the pre-activated one", M),
    Mutation("zero-pad-wrong-subsample", "reproresnet/models.py",
             "x = x[:, :, :: self.stride, :: self.stride]", "x = x[:, :, 1:: self.stride, 1:: self.stride]",
             "option-A shortcut samples the odd pixels", M),
    Mutation("relu-before-addition-original", "reproresnet/models.py",
             "out = self.bn2(self.conv2(out))", "out = F.relu(self.bn2(self.conv2(out)))",
             "original basic unit applies a ReLU before the addition", M),
    Mutation("relu-before-addition-original-bottleneck", "reproresnet/models.py",
             "out = self.bn3(self.conv3(out))", "out = F.relu(self.bn3(self.conv3(out)))",
             "original bottleneck applies a ReLU before the addition", M),
    Mutation("stage2-not-downsampling", "reproresnet/models.py",
             "self._make_stage(block, widths[1], units[1], 2,", "self._make_stage(block, widths[1], units[1], 1,",
             "stage 2 keeps the resolution", M),
    Mutation("final-relu-missing", "reproresnet/models.py",
             "nn.Sequential(nn.BatchNorm2d(self.in_planes), nn.ReLU()) if preact",
             "nn.Sequential(nn.BatchNorm2d(self.in_planes)) if preact",
             "pre-activation networks lose the ReLU after their final BN", M),
    Mutation("stem-relu-missing-original", "reproresnet/models.py",
             "nn.Sequential(conv, nn.BatchNorm2d(16), nn.ReLU())", "nn.Sequential(conv, nn.BatchNorm2d(16))",
             "original networks lose the stem's ReLU", M),
    Mutation("he-init-wrong-fan", "reproresnet/models.py",
             'mode="fan_out"', 'mode="fan_in"',
             "He initialisation from the fan-in instead of the fan-out", M),
    Mutation("he-init-uniform", "reproresnet/models.py",
             'nn.init.kaiming_normal_(m.weight, mode="fan_out"', 'nn.init.kaiming_uniform_(m.weight, mode="fan_out"',
             "He initialisation uniform instead of normal (same variance)", M),
    Mutation("bn-beta-init-one", "reproresnet/models.py",
             "nn.init.ones_(m.weight)\n                nn.init.zeros_(m.bias)", "nn.init.ones_(m.weight)\n                nn.init.ones_(m.bias)",
             "BN beta starts at 1", M),
    Mutation("wide-default-dropout-off", "reproresnet/architectures.py",
             'defaults["dropout"] = 0.3', 'defaults["dropout"] = 0.0',
             "the report's WRN-16-4 trains without dropout", "tests/test_models.py"),
    # ---- data
    Mutation("pixel-mean-wrong-count", "reproresnet/data.py",
             "/ (255 * n)", "/ (255 * (n + 1))",
             "per-pixel mean divided by one image too many", D),
    Mutation("channel-std-not-rooted", "reproresnet/data.py",
             ".sum(1).sqrt()", ".sum(1)",
             "per-channel normalisation divides by the variance", D),
    Mutation("hold-out-overlaps-training", "reproresnet/data.py",
             "order[val_size:]", "order[val_size - 1:]",
             "one validation image is also trained on", D),
    Mutation("eval-data-flipped", "reproresnet/data.py",
             "yield normalizer(images), labels", "yield normalizer(images).flip(-1), labels",
             "evaluation images are augmented (flipped)", D),
    Mutation("crop-pad-2", "reproresnet/data.py",
             "PAD = 4", "PAD = 2",
             "random crops from a 2-pixel instead of a 4-pixel pad", "tests/test_data.py"),
    Mutation("never-flip", "reproresnet/data.py",
             "flips = torch.randint(0, 2,", "flips = torch.randint(0, 1,",
             "horizontal flips never happen", "tests/test_data.py"),
    Mutation("per-image-per-batch-swapped", "reproresnet/data.py",
             'draws = batch if mode == "per_image" else 1', 'draws = batch if mode == "per_batch" else 1',
             "per_image and per_batch augmentation swapped", "tests/test_data.py"),
    # ---- recipes and schedule
    Mutation("wrn-gamma-0.1", "reproresnet/recipes.py",
             "gamma=0.2, batch_size=128", "gamma=0.1, batch_size=128",
             "WRN recipe decays by 0.1 instead of 0.2", R),
    Mutation("milestones-not-in-iterations", "reproresnet/recipes.py",
             "m * to_iterations", "m",
             "epoch milestones read as iterations", T),
    Mutation("milestone-one-step-late", "reproresnet/recipes.py",
             "bisect.bisect_right(self.milestones, iteration)", "bisect.bisect_left(self.milestones, iteration)",
             "the decay starts one step after its milestone", T),
    Mutation("warm-up-wrong-networks", "reproresnet/recipes.py",
             "or arch in self.warmup_archs", "or arch not in self.warmup_archs",
             "warm-up applied to the other networks", T),
    Mutation("warm-up-one-step-long", "reproresnet/recipes.py",
             "if iteration < self.warmup_iterations:", "if iteration <= self.warmup_iterations:",
             "warm-up lasts one step too long", T),
    Mutation("steps-per-epoch-floor", "reproresnet/recipes.py",
             "math.ceil(train_size / recipe.batch_size)", "train_size // recipe.batch_size",
             "an epoch drops its last, smaller batch from the schedule", T),
    Mutation("shortened-run-scale-inverted", "reproresnet/recipes.py",
             "scale = epochs / self.length", "scale = self.length / epochs",
             "a shortened run scales its milestones the wrong way", R),
    Mutation("setting-rules-not-applied", "reproresnet/config.py",
             'if field.metadata["rule"] is not None:', "if False:",
             "a run's own settings (seed, dataset, device, limits, ...) are taken unchecked", "tests/test_config.py"),
    Mutation("weight-decay-override-dropped", "reproresnet/config.py",
             "weight_decay: Optional[float] = setting(role=RECIPE)", "weight_decay: Optional[float] = setting()",
             "--weight-decay never reaches the recipe", T),
    # ---- training loop: optimizer, schedule, evaluation, summary
    Mutation("engine-precision-ignored", "reproresnet/engine.py",
             "with autocast(precision, images.device):", 'with autocast("fp32", images.device):',
             "a bf16 run's steps run in fp32", E),
    Mutation("nesterov-dropped", "reproresnet/engine.py",
             "nesterov=recipe.nesterov", "nesterov=False",
             "Nesterov momentum never reaches the optimizer", T),
    Mutation("weight-decay-hard-coded", "reproresnet/engine.py",
             "weight_decay=recipe.weight_decay", "weight_decay=1e-4",
             "the recipe's weight decay never reaches the optimizer (1e-4 for all)", T),
    Mutation("momentum-hard-coded", "reproresnet/engine.py",
             "momentum=recipe.momentum", "momentum=0.9",
             "the recipe's momentum never reaches the optimizer (0.9 for all)", T),
    Mutation("epoch-line-last-lr-only", "reproresnet/train.py",
             "first, last = schedule.epoch_lrs(row[\"epoch\"] - 1)", "first = last = row[\"lr\"]",
             "the epoch line prints the lr of its last step as the lr it ran at", "tests/test_train.py"),
    Mutation("lr-never-scheduled", "reproresnet/train.py",
             "stack.engine.set_lr(lr)", "stack.engine.set_lr(schedule.lr)",
             "the optimizer keeps the peak learning rate", T),
    Mutation("lr-one-step-ahead", "reproresnet/train.py",
             "schedule.lr_at(first + index)", "schedule.lr_at(first + index + 1)",
             "each step uses the next step's learning rate", T),
    Mutation("normaliser-fitted-on-test", "reproresnet/train.py",
             "Normalizer.fit(s.train.images", "Normalizer.fit(s.test.images",
             "normalisation statistics from the test images", D),
    Mutation("eval-in-training-mode", "reproresnet/train.py",
             "stack.model.eval()", "stack.model.train()",
             "evaluation with batch statistics and dropout", T),
    Mutation("eval-loss-mean-of-means", "reproresnet/train.py",
             "loss_sum += losses * labels.shape[1]", "loss_sum += losses",
             "evaluation loss summed from per-batch means", T),
    Mutation("eval-error-argmin", "reproresnet/stacked.py",
             "errors = (logits.argmax(2) != targets).sum(0)", "errors = (logits.argmin(2) != targets).sum(0)",
             "training and evaluation count errors against the least likely class", T),
    Mutation("summary-best-test", "reproresnet/records.py",
             'key=lambda row: row["val_error"]', 'key=lambda row: row["test_error"]',
             "the reported epoch is chosen on the test set", T),
    Mutation("summary-final-is-best", "reproresnet/records.py",
             "chosen = metrics[-1]", 'chosen = min(metrics, key=lambda row: row["test_error"])',
             "without validation, the best test epoch is reported instead of the final one", T),
    Mutation("summary-speed-with-warm-up", "reproresnet/records.py",
             'timed = [row for row in metrics if row["epoch"] not in warmup_epochs] or metrics', "timed = metrics",
             "the reported speed includes the compiling first epoch", T),
    Mutation("resumable-without-a-kept-checkpoint", "reproresnet/campaign/bundle.py",
             "return (run_dir / records.CHECKPOINT_FILE).exists() or run_dir.name in bundled_checkpoints(committed)",
             "return True", "a stopped run whose checkpoint is gone is called resumable", "tests/test_bundle.py"),
    Mutation("resumable-ignores-the-committed-bundle", "reproresnet/campaign/bundle.py",
             "return frozenset(path.parent.name for path in paths if path.name == records.CHECKPOINT_FILE)",
             "return frozenset()", "a run whose checkpoint is in the committed bundle is called not kept",
             "tests/test_bundle.py"),
    # ---- issue 8's options: weight-decay scope, ghost batch norm, the seed's wide network
    Mutation("weight-decay-scope-ignored", "reproresnet/engine.py",
             "decayed = DECAYED_ROLES[recipe.weight_decay_on]", 'decayed = DECAYED_ROLES["all"]',
             "weight decay reaches BN's beta and the biases under the seed_code recipe's 'lasagne' scope", T),
    Mutation("ghost-bn-whole-batch", "reproresnet/models.py",
             "chunks = x.tensor_split(math.ceil(x.shape[0] / self.ghost_batch))", "chunks = [x]",
             "bn_batch normalises over the whole mini-batch instead of its chunks", "tests/test_models.py"),
    Mutation("ghost-bn-partial-batch-by-size", "reproresnet/models.py",
             "chunks = x.tensor_split(math.ceil(x.shape[0] / self.ghost_batch))", "chunks = x.split(self.ghost_batch)",
             "a partial batch of 80 is normalised as 64 + 16, not as the 40 + 40 of two processes",
             "tests/test_models.py"),
    Mutation("ghost-bn-statistics-in-float32", "reproresnet/models.py",
             "torch.var_mean(c.to(self.running_var.dtype)", "torch.var_mean(c.float()",
             "ghost batch norm's statistics in float32 whatever its buffers' dtype (fails in float64)",
             "tests/test_models.py"),
    Mutation("ghost-bn-biased-running-var", "reproresnet/models.py",
             "(0, 2, 3), correction=1)", "(0, 2, 3), correction=0)",
             "ghost batch norm's running variance without Bessel's correction", "tests/test_models.py"),
    Mutation("seed-wrn-conv2-bias-dropped", "reproresnet/models.py",
             'last_bias = {"last_bias": True} if lasagne', 'last_bias = {"last_bias": False} if lasagne',
             "Lasagne's layers (the seed's wide network) lose the bias on each unit's last convolution",
             "tests/test_models.py"),
    # ---- issue 18: nothing lost at any instant, checkpoints that never run code
    Mutation("resume-skips-record-rebuild", "reproresnet/rundir.py",
             "        if repair:\n", "        if False:\n",
             "a resume never rewrites run.json and metrics.csv from the checkpoint", "tests/test_crash_safety.py"),
    Mutation("checkpoint-without-its-record", "reproresnet/rundir.py",
             '{**checkpoint, "record": json.loads(content)}', "checkpoint",
             "checkpoints do not hold the run record a resume rebuilds run.json from", "tests/test_crash_safety.py"),
    Mutation("damaged-checkpoint-fails-a-complete-run", "reproresnet/rundir.py",
             "        if not complete:\n", "        if True:\n",
             "a complete run whose checkpoint is damaged is an error instead of its result",
             "tests/test_bad_input.py"),
    Mutation("weights-only-dropped", "reproresnet/rundir.py",
             'map_location="cpu", weights_only=True', 'map_location="cpu", weights_only=False',
             "checkpoints are unpickled in full: a pickled payload runs", "tests/test_bad_input.py"),
    Mutation("orphan-cleanup-too-broad", "reproresnet/rundir.py",
             'glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}")', 'glob(f".*{TEMP_SUFFIX}")',
             "a resume deletes every .*.tmp file in the run directory, the user's too", "tests/test_crash_safety.py"),
    Mutation("full-disk-leaves-empty-lock", "reproresnet/rundir.py",
             "if fresh and _wrote_nothing(run_dir, before):", "if False:",
             "a refused call leaves the lock it created (empty, on a full disk) and the folders it made",
             "tests/test_bad_input.py"),
    Mutation("lock-shared-after-its-removal", "reproresnet/rundir.py",
             "if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:", "if True:",
             "a process locks a lock file its refused holder removed, beside one that locks the new file",
             "tests/test_refusals.py"),
    Mutation("progress-ignores-the-checkpoint", "reproresnet/rundir.py",
             'found.append((len(checkpoint.get("metrics", [])), _checkpoint_complete(checkpoint)))', "pass",
             "how far a run got is read from run.json alone", "tests/test_bundle.py"),
    Mutation("resume-forgets-its-threads", "reproresnet/train.py",
             "resumed=rundir.last_threads(Path(configs[0].out)) if resume else None", "resumed=None",
             "a resume on a CPU picks its threads by today's load, so its last bits differ", "tests/test_train.py"),
    Mutation("unbundle-without-epochs-comparison", "reproresnet/campaign/bundle.py",
             "if here > progress:", "if False:",
             "unbundle replaces a run that is further along with the bundle's older one", "tests/test_bundle.py"),
    Mutation("unbundle-rolls-the-campaign-state-back", "reproresnet/campaign/bundle.py",
             "if run is None and skipped:", "if False:",
             "an older bundle replaces the campaign's newer self-check and call history", "tests/test_bundle.py"),
    Mutation("unbundle-without-the-run-lock", "reproresnet/campaign/bundle.py",
             "lock.enter_context(rundir.run_dir_lock(target))", "pass",
             "unbundle writes into a run directory while a run trains there", "tests/test_bundle.py"),
    Mutation("unbundle-keeps-stale-checkpoints", "reproresnet/campaign/bundle.py",
             "(target / name).unlink(missing_ok=True)", "pass",
             "a run restored complete keeps the older checkpoint the bundle left out", "tests/test_bundle.py"),
    Mutation("manifest-allows-parent-paths", "reproresnet/campaign/bundle.py",
             " or not all(map(records.is_safe_name, rel.parts))", "",
             "a manifest may list ../ paths", "tests/test_bundle.py"),
    Mutation("bundle-includes-its-destination", "reproresnet/campaign/bundle.py",
             "excluded in path.resolve().parents", "False",
             "bundle DIR --to DIR/out packs its own earlier parts", "tests/test_bundle.py"),
    Mutation("sweep-settings-unchecked", "reproresnet/launch/sweep.py",
             "    _check_settings(archs, seeds, parameters)\n", "",
             "the sweep launches jobs whose settings train would refuse", "tests/test_sweep.py"),
    Mutation("non-finite-numbers-accepted", "reproresnet/arguments.py",
             "if not math.isfinite(value):", "if False:",
             "--budget nan (and --lr inf, ...) are read as numbers", "tests/test_bad_input.py"),
    Mutation("campaign-no-clean-stop-before-the-hard-stop", "reproresnet/campaign/process.py",
             "return Deadlines(hard_stop, hard_stop - reserve)", "return Deadlines(hard_stop, hard_stop)",
             "runs stop cleanly only at the hard stop, where an epoch still running is abandoned", C),
    Mutation("campaign-negative-seconds-accepted", "reproresnet/arguments.py",
             "    if value < 0:\n", "    if False:\n",
             "campaign --min-start -1 (or --max-unfinished-mb -5) is taken as given", "tests/test_refusals.py"),
    # ---- issue 19: the seed's 2016-04 code state, WRN's code, momentum forms, padding, loss, precision
    Mutation("stage1-preact-option-ignored", "reproresnet/models.py",
             'rest = {"preactivate": False} if preact_stage1 == "first_unit" else {}', "rest = {}",
             "the 2016-04 code state's stage-1 units keep their own BN-ReLU", "tests/test_models.py"),
    Mutation("reflect-padding-is-zero", "reproresnet/data.py",
             'mode="reflect" if padding == "reflect" else "constant"', 'mode="constant"',
             "reflection padding pads zeros", "tests/test_data.py"),
    Mutation("reflect-padding-replicates-the-edge", "reproresnet/data.py",
             'mode="reflect" if padding == "reflect"', 'mode="replicate" if padding == "reflect"',
             "reflection padding repeats the edge pixel instead of mirroring across it", "tests/test_data.py"),
    Mutation("padding-stops-at-the-recipe", "reproresnet/train.py",
             "augmentation=recipe.augmentation, padding=recipe.padding, device=device,",
             "augmentation=recipe.augmentation, device=device,",
             "the loop's batches are zero-padded whatever the recipe says", T),
    Mutation("raw-pixels-rescaled", "reproresnet/data.py",
             'std = one / 255 if mode == "per_pixel_mean_0_255" else one', "std = one",
             "the seed's raw 0-255 inputs come out in [0, 1] units", "tests/test_data.py"),
    Mutation("zca-filter-bias", "reproresnet/data.py",
             "GCN_SCALE, ZCA_FILTER_BIAS = 55.0, 0.1", "GCN_SCALE, ZCA_FILTER_BIAS = 55.0, 0.01",
             "ZCA whitening with another filter bias than pylearn2's 0.1", "tests/test_data.py"),
    Mutation("zca-covariance-not-centred", "reproresnet/data.py",
             "covariance = gram / len(train_images) - torch.outer(mean, mean)",
             "covariance = gram / len(train_images)",
             "ZCA from the second moment instead of the covariance", "tests/test_data.py"),
    Mutation("wrn-decay-after-60-epochs", "reproresnet/recipes.py",
             "milestones=(59, 119, 159)", "milestones=(60, 120, 160)",
             "the WRN recipe decays one epoch later than the authors' train.lua", R),
    Mutation("seed-2016-04-batch-64", "reproresnet/recipes.py",
             "lr=0.01, batch_size=32,", "lr=0.01, batch_size=64,",
             "the 2016-04 code state's batch of 32 becomes the later 64", R),
    Mutation("lasagne-momentum-not-rescaled", "reproresnet/recipes.py",
             'return old / new if form == "lasagne" else 0.0', 'return 1.0 if form == "lasagne" else 0.0',
             "Lasagne's velocity is treated as PyTorch's buffer across a change of lr", T),
    Mutation("lasagne-momentum-scale-inverted", "reproresnet/recipes.py",
             'return old / new if form == "lasagne" else 0.0', 'return new / old if form == "lasagne" else 0.0',
             "the buffer is rescaled by new/old instead of old/new", T),
    Mutation("momentum-reset-kept", "reproresnet/recipes.py",
             'return old / new if form == "lasagne" else 0.0', 'return old / new if form == "lasagne" else 1.0',
             "the WRN recipe keeps its momentum where train.lua starts a fresh optimizer state", T),
    Mutation("momentum-rescale-never-applied", "reproresnet/train.py",
             "scale_momentum_(stack.optimizer, momentum_scale)", "None",
             "the loop never rescales or resets the momentum buffers", T),
    Mutation("loss-label-smoothing", "reproresnet/stacked.py",
             'F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")',
             'F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", label_smoothing=0.1)',
             "training minimises a label-smoothed cross-entropy", T),
    Mutation("loss-summed", "reproresnet/stacked.py",
             'targets, reduction="none").mean(0)', 'targets, reduction="none").sum(0)',
             "training minimises the batch's summed loss (lr times the batch size)", T),
    Mutation("eval-tf32-left-on", "reproresnet/engine.py",
             "torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False",
             "torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True",
             "evaluation lets cuDNN and matmuls use TF32", T),
    Mutation("he2016-statistic-not-stated", "reproresnet/reference.py",
             'HE2016_MEDIAN = ("median of 5"', 'HE2016_MEDIAN = ("not stated"',
             "He et al.'s numbers lose the statistic their paper states", "tests/test_reference.py"),
    Mutation("precision-note-dropped", "reproresnet/book/tables.py",
             "_precision_note(group[0])) if text]", "None) if text]",
             "the error table's notes stop saying which precision our runs ran in", "tests/test_report.py"),
    # ---- issue 17: K seeds as one channel-stacked network
    Mutation("stacked-classifier-dense", "reproresnet/stacked.py",
             "features = x.unflatten(1, (self.k, self.in_features)).transpose(0, 1)",
             "features = x.unflatten(1, (self.k, self.in_features)).sum(1, True).expand(-1, self.k, -1).transpose(0, 1)",
             "each model's classifier reads the sum of every model's features (a dense layer over the stack)",
             STACKED),
    Mutation("stacked-zero-pad-whole-tensor", "reproresnet/stacked.py",
             "pad = super().forward\n        return torch.cat([pad(block) for block in x.chunk(self.k, 1)], 1)",
             "return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.k * self.extra_channels))",
             "the stack's zero-padding shortcut pads the whole tensor, not each model's channel block", STACKED),
    Mutation("stacked-loss-mean-of-means", "reproresnet/stacked.py",
             "return losses.sum(), losses, errors", "return losses.mean(), losses, errors",
             "the stack's loss is the mean of the models' losses: each model's learning rate divided by K", STACKED),
    Mutation("stacked-state-views", "reproresnet/stacked.py",
             "return [part.clone() for part in value.chunk(k)]", "return list(value.chunk(k))",
             "split states are views of the stack: a checkpoint writes the whole stacked tensor", STACKED),
    Mutation("weight-decay-by-module-type", "reproresnet/engine.py",
             '{"weight": "bn_gamma", "bias": "bn_beta"}[name] if batch_norm else name',
             '{"weight": "bn_gamma", "bias": "bn_beta"}[name] if batch_norm else name '
             'if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) else "bias"',
             "roles come from Conv2d and Linear modules: a stack's classifier is neither, its weight not decayed",
             STACKED),
    Mutation("weight-decay-groups-flipped", "reproresnet/engine.py",
             'if role in decayed]},\n              {"params": [p for p, role in roles if role not in decayed]',
             'if role not in decayed]},\n              {"params": [p for p, role in roles if role in decayed]',
             "each scope decays the parameters it should spare and spares those it should decay", R),
    Mutation("lasagne-scope-without-gamma", "reproresnet/recipes.py",
             '"lasagne": ("weight", "bn_gamma"),', '"lasagne": ("weight",),',
             "seed_code's L2 spares batch norm's gamma, which Lasagne tags regularizable=True", R),
    Mutation("weight-decay-role-by-shape", "reproresnet/engine.py",
             '{"weight": "bn_gamma", "bias": "bn_beta"}[name] if batch_norm else name',
             '"weight" if parameter.ndim >= 2 else "bias"',
             "a parameter's role by its shape: BN's 1-d gamma counts as a bias, spared by seed_code's L2", R),
    # ---- issue 17: the engines, K runs as one stack in the loop, the one-process campaign
    Mutation("graph-static-images-stale", "reproresnet/engine.py",
             "        self.images.copy_(images)\n", "",
             "the graph replays on the batch it was captured with, never the new one", E),
    Mutation("graph-lr-tensor-never-set", "reproresnet/engine.py",
             "            self.lr_tensor.fill_(lr)", "            pass",
             "the fused SGD's lr tensor keeps its first value: schedule changes never reach the graph", E),
    Mutation("graph-smaller-batch-captured", "reproresnet/engine.py",
             "        if labels.shape[1] != self.batch_size:\n            return self.eager_step(images, labels)\n",
             "", "the epoch's smaller batch goes to the graph's static buffers", E),
    Mutation("stack-one-nan-stops-all", "reproresnet/stacked.py",
             "finite = torch.isfinite(flat).all(1).tolist()", "finite = [bool(torch.isfinite(flat).all())] * k",
             "a NaN in one network of a stack stops every run of it", TT),
    Mutation("stack-optimizer-state-unsplit", "reproresnet/stacked.py",
             "return model.model_state_dicts(), split_optimizer_state(state, k)",
             "return model.model_state_dicts(), [state] * k",
             "each stacked run's checkpoint holds the whole stack's momentum", TT),
    Mutation("stack-resumed-from-different-epochs", "reproresnet/rundir.py",
             "            check_same_epoch(found.to_train, found.checkpoints)\n", "",
             "runs at different epochs are trained as one stack from the first run's epoch", TT),
    Mutation("stack-one-data-order", "reproresnet/train.py",
             "run_batches(stack, run, epoch_seed(run.config.seed, epoch))",
             "run_batches(stack, run, epoch_seed(runs[0].config.seed, epoch))",
             "every run of a stack draws the first run's data order and augmentation", TT),
    Mutation("stack-eval-one-normaliser", "reproresnet/train.py",
             "normalizer=run.normalizer, device=stack.device)", "normalizer=stack.runs[0].normalizer, device=stack.device)",
             "a stack evaluates every run with the first run's normaliser", TT),
    Mutation("campaign-failed-stack-not-split", "reproresnet/campaign/slot.py",
             "        if len(group) > 1:\n            log(", "        if False:\n            log(",
             "a stack that fails is not retried run by run: one stuck run holds back its seeds", C),
    Mutation("campaign-starts-after-a-deadline-stop", "reproresnet/campaign/slot.py",
             'if any(outcome.get("outcome") == "stopped" for outcome in outcomes.values()):', "if False:",
             "new stacks start after one stopped for the deadline", C),
    Mutation("selfcheck-cost-per-step", "reproresnet/campaign/selfcheck.py",
             'return result["seconds_per_step"] / result["stack"]', 'return result["seconds_per_step"]',
             "the check compares a stack's step with one network's: stacks never win", SC),
    Mutation("selfcheck-precision-cost-flipped", "reproresnet/campaign/selfcheck.py",
             "if ratio > PRECISION_COST:", "if ratio < PRECISION_COST:",
             "bf16 is chosen when fp32 is nearly as fast, and fp32 when it is not", SC),
    Mutation("selfcheck-times-with-tf32", "reproresnet/campaign/selfcheck.py",
             "    with exact_fp32():\n        for stack in stacks:", "    if True:\n        for stack in stacks:",
             "the check times fp32 variants with cuDNN's TF32 on: faster than the runs will train", SC),
    Mutation("selfcheck-lr-never-changes", "reproresnet/campaign/selfcheck.py",
             "set_step_lr(stack, recipe.lr * judged.lr, judged.momentum_scale)",
             "set_step_lr(stack, recipe.lr, judged.momentum_scale)",
             "the judged steps keep the capture's lr: a graph that baked its lr in passes", SC),
    Mutation("selfcheck-bf16-without-twin", "reproresnet/campaign/selfcheck.py",
             'if not (tried.get(twin) or {}).get("ok"):', "if False:",
             "a bf16 variant passes on its loose floor where its fp32 twin's machinery failed", SC),
    Mutation("selfcheck-cut-short-reused", "reproresnet/campaign/variants.py",
             'if record.get("complete") is not True:', "if False:",
             "a self-check cut short by its budget is reused by every later campaign call", SC),
    # ---- records and notebooks
    Mutation("metrics-csv-2-digits", "reproresnet/records.py",
             'f"{value:.6g}"', 'f"{value:.2g}"',
             "metrics.csv rounds every number to 2 significant digits", S),
    Mutation("metrics-csv-no-val-error", "reproresnet/records.py",
             '"val_loss", "val_error", ', '"val_loss", ',
             "metrics.csv loses the validation error column", S),
    Mutation("glue-renamed", "notebooks/train.ipynb",
             'glue(\\"test_error\\"', 'glue(\\"test_err\\"',
             "train.ipynb glues the test error under another name", S),
    Mutation("glue-wrong-value", "notebooks/train.ipynb",
             'glue(\\"params\\", record.params', 'glue(\\"params\\", record.epochs_done',
             "train.ipynb glues another number as the parameter count", S),
    # ---- runs as they are, and the book that shows them
    Mutation("deadline-stop-says-running", "reproresnet/records.py",
             'self.status, self.message = "stopped", message', "self.message = message",
             "a run stopped at a deadline keeps saying 'running'", TT),
    Mutation("old-deadline-record-not-migrated", "reproresnet/records.py",
             'data["status"] = "stopped"', 'data["status"] = "running"',
             "a deadline stop recorded before the 'stopped' status still reads as running", "tests/test_records.py"),
    Mutation("dead-lock-holder-is-running", "reproresnet/records.py",
             "    except ProcessLookupError:\n        return False", "    except ProcessLookupError:\n        return True",
             "a run whose process was killed reads as running", "tests/test_records.py"),
    Mutation("numbers-not-linked", "reproresnet/book/render.py",
             "    if names:\n        return lambda value: _record_link(",
             "    if False:\n        return lambda value: _record_link(", "a number of ours no longer links to its record",
             "tests/test_report.py"),
    Mutation("packed-gpu-time-counted-thrice", "reproresnet/book/runs.py",
             "sum(seconds / share(segment) for", "sum(seconds for",
             "GPU-hours count each packed run's epoch as a whole GPU's time", "tests/test_report.py"),
    Mutation("lr-drops-in-iterations", "reproresnet/book/figures.py",
             "[milestone / per_epoch for milestone", "[milestone for milestone",
             "the curves mark the learning-rate drops at iterations, not epochs", "tests/test_report.py"),
    Mutation("lost-epochs-count-towards-the-plan", "reproresnet/book/plan.py",
             "if chosen.continues(run)) for group", "if True) for group",
             "GPU-hours to finish subtract epochs whose checkpoint is gone", "tests/test_report.py"),
    Mutation("coinciding-references-labelled-twice", "reproresnet/book/figures.py",
             "label=label if index == 0 else None", "label=label",
             "two reference lines on one another get a legend entry each", "tests/test_report.py"),
    Mutation("noise-one-digit-too-many", "reproresnet/book/render.py",
             "digits = -math.floor(math.log10(abs(value) * relative))",
             "digits = 1 - math.floor(math.log10(abs(value) * relative))",
             "benchmark numbers keep a digit their noise does not allow", "tests/test_report.py"),
    Mutation("status-counts-every-run", "reproresnet/book/plan.py",
             "return sum(min(len(PLANNED_SEEDS), sum(", "return sum(max(len(PLANNED_SEEDS), sum(",
             "the status line counts more complete runs than the plan has", "tests/test_report.py"),
    Mutation("claims-band-one-sd", "reproresnet/book/plan.py",
             "low, high = mean - BAND_SDS * sd, mean + BAND_SDS * sd", "low, high = mean - sd, mean + sd",
             "a quoted number is judged against our mean ± 1 sd, not the ± 2 sd the rule states",
             "tests/test_report.py"),
    Mutation("claims-tested-before-complete", "reproresnet/book/plan.py",
             "complete = all(len(group) >= len(PLANNED_SEEDS) for group in groups)",
             "complete = all(len(group) >= 2 for group in groups)",
             "a claim is decided before all planned seeds are complete", "tests/test_report.py"),
    Mutation("campaign-second-tier-starts-early", "reproresnet/campaign/slot.py",
             "        if unfinished:\n            for config in", "        if False:\n            for config in",
             "the original units train before the pre-activation runs they are compared with have finished", C),
    Mutation("threads-not-divided", "reproresnet/config.py",
             "share, free = max(1, cores // max(jobs, 1))", "share, free = max(1, cores)",
             "jobs sharing the cores each take all of them", "tests/test_config.py"),
    Mutation("threads-ignore-load", "reproresnet/config.py",
             "return min(share, free)", "return share",
             "a busy machine gets more threads than it has free cores", "tests/test_config.py"),
    Mutation("sweep-jobs-not-sharing-cores", "reproresnet/launch/sweep.py",
             "threads, _ = cpu_threads(jobs=len(free))", "threads, _ = cpu_threads(jobs=1)",
             "a sweep's parallel local jobs each take every core", "tests/test_sweep.py"),
    # ---- records are untrusted input; ours or nothing (issue 25)
    Mutation("record-strings-not-escaped", "reproresnet/book/render.py",
             "    return \"\".join(char(index, c) for index, c in enumerate(text))", "    return text",
             "a record's strings reach the book's pages as Markdown and HTML: <script>, links, roles", U),
    Mutation("page-path-not-checked", "reproresnet/book/pages.py",
             'if name in ("", ".", "..") or any(char in name for char in "/\\\\\\0"):', "if False:",
             "a record's name chooses where its page is written: ../../README overwrites the README", U),
    Mutation("unbundle-ignores-the-experiment", "reproresnet/campaign/bundle.py",
             "changed = config.recorded_differences(local, bundled.config) if local and bundled.config else {}",
             "changed = {}", "unbundle replaces a local run of another experiment (seed, lr) with the bundle's", U),
    Mutation("ours-not-checked", "reproresnet/rundir.py",
             "if found and not holds_run(run_dir):", "if False:",
             "train --resume overwrites a user's own metrics.csv and run.json in a folder it did not write", U),
    Mutation("tag-not-checked", "reproresnet/records.py",
             "if tag is not None and not is_safe_name(tag):", "if False:",
             "campaign --tag ../../x writes runs outside --out", U),
    Mutation("record-name-not-checked", "reproresnet/records.py",
             '(("name",), lambda value: value is None or is_safe_name(value), NAME_RULE),', "",
             "a record named ../../README is read as any other: its page would go outside the pages' folder", U),
    Mutation("architecture-table-misread", "reproresnet/architectures.py",
             '_TYPES = {"depth": int, "width": int, "params": int,', '_TYPES = {"depth": int, "width": int, "params": str,',
             "the book's parameter counts are read as text", "tests/test_architectures.py"),
    # ---- issue 24: a GPU slot that starts no work it cannot finish, and its device probe
    Mutation("fresh-epoch-predicted-instant", "reproresnet/train.py",
             "return deadline.untimed_epoch_seconds(steps, evaluated / stack.recipe.batch_size)", "return 0.0",
             "a fresh run's first epoch is predicted to take no time, and is begun when it cannot end", TT),
    Mutation("group-after-deadline-stop", "reproresnet/campaign/slot.py",
             "if why := _why_not_start(outcomes, options, stop_at):  # a run", "if why := None:  # a run",
             "a network's next run apart starts after one stopped for the deadline", C),
    Mutation("alarm-inside-capture", "reproresnet/engine.py",
             "with alarm_held():  # an alarm", "with nullcontext():  # an alarm",
             "a budget alarm may raise inside the CUDA graph capture", E),
    Mutation("probe-lr-unchecked", "reproresnet/campaign/probe.py",
             "lr_ok = all(abs(read - lr) <= 1e-3 * lr", "lr_ok = any(abs(read - lr) <= 1e-3 * lr",
             "the probe passes a graph whose replays never read the new lr", "tests/test_slot.py"),
]

# Changes that alter no number the project reports, listed so nobody adds them as mutations.
EQUIVALENT = [
    ("evaluate without @torch.no_grad()", "the same forward in eval mode; only memory and speed change"),
    ("zero_grad(set_to_none=True) -> set_to_none=False", "zero and absent gradients give the same SGD "
     "update: every parameter gets a gradient at every step"),
    ("cudnn.benchmark = True -> False", "picks among equivalent CUDA kernels; never reached on a CPU"),
    ("hold-out stream _rng(seed, 'val') -> another stream", "another seeded, disjoint split is as valid; "
     "which images are held out is not part of any source's recipe"),
]


def repo_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files, as the repository would be cloned with local work."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         capture_output=True, text=True, check=True).stdout
    return [name for name in out.split("\0") if name and (root / name).is_file()]


def copy_repo(root: Path, dest: Path) -> None:
    for name in repo_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def check_snippets(mutations: list[Mutation], root: Path) -> list[str]:
    """Every snippet must occur exactly once in its file; returns the problems."""
    problems = []
    for m in mutations:
        path = root / m.file
        count = path.read_text().count(m.original) if path.is_file() else 0
        if count != 1 or m.original == m.replacement:
            problems.append(f"{m.name}: snippet {m.original!r} occurs {count} time(s) in {m.file}"
                            + (" (replacement is the same text)" if m.original == m.replacement else ""))
    return problems


def copy_env(copy: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}


def imports_the_copy(copy: Path) -> bool:
    """The tests must import the mutated library, not an installed one."""
    found = subprocess.run([sys.executable, "-c", "import reproresnet; print(reproresnet.__file__)"], cwd=copy,
                           env=copy_env(copy), capture_output=True, text=True).stdout.strip()
    return Path(found).resolve().is_relative_to(copy.resolve())


def pytest(copy: Path, targets: list[str]) -> tuple[int, str]:
    env = copy_env(copy)
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", *FAST_TIER, *targets], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    return done.returncode, done.stdout + done.stderr


def killer(output: str) -> str:
    """The failing test (or the erroring module) named in pytest's short summary."""
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return found.group(1) if found else "(pytest failed; see its output)"


def run_mutation(m: Mutation, copy: Path) -> tuple[str, float]:
    """Apply `m` to the copy, run the tests, restore the file; returns (killed by, seconds)."""
    path = copy / m.file
    original = path.read_text()
    start = time.perf_counter()
    path.write_text(original.replace(m.original, m.replacement))
    try:
        for targets in ([m.first], ["tests"]) if m.first else (["tests"],):
            code, output = pytest(copy, targets)
            if code == -1:
                return "killed: timeout", time.perf_counter() - start
            if code in (1, 2):
                return killer(output), time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"pytest exited {code} for {m.name}:\n{output[-3000:]}")
        return "SURVIVED", time.perf_counter() - start
    finally:
        path.write_text(original)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and the equivalent ones, then exit")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the clean run of the fast tier (a test that already fails would fake a kill)")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTATIONS]
    assert len(set(names)) == len(names), "mutation names must be unique"
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:42} {m.file:24} {m.description}")
        print("\nEquivalent by design (not run):")
        for what, why in EQUIVALENT:
            print(f"  {what}: {why}")
        return 0
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    problems = check_snippets(MUTATIONS, ROOT)
    if problems:
        print("Snippets not found (update the mutation to the source):\n  " + "\n  ".join(problems))
        return 2

    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        copy = Path(tmp) / "repo"
        copy_repo(ROOT, copy)
        if not imports_the_copy(copy):
            print(f"python does not import reproresnet from the copy {copy}; check PYTHONPATH and installs")
            return 2
        if not args.no_baseline:
            start = time.perf_counter()
            code, output = pytest(copy, ["tests"])
            if code != 0:
                print(f"The fast tier fails without any mutation ({killer(output)}); fix that first.")
                return 2
            print(f"baseline: the fast tier passes unmutated ({time.perf_counter() - start:.0f} s)")
        rows = []
        print(f"{'mutation':42} {'seconds':>7}  killed by")
        for m in chosen:
            by, seconds = run_mutation(m, copy)
            rows.append((m, by, seconds))
            print(f"{m.name:42} {seconds:7.0f}  {by}", flush=True)

    survivors = [m for m, by, _ in rows if by == "SURVIVED"]
    print(f"\n{len(rows) - len(survivors)} of {len(rows)} mutations killed; "
          f"{len(EQUIVALENT)} equivalent by design, not counted (--list shows why).")
    for m in survivors:
        print(f"SURVIVOR {m.name} ({m.file}): {m.description}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
