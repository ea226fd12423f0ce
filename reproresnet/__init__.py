"""reproresnet: pre-activation and wide ResNets on CIFAR-10, reproduced.

The package itself is the science core, and imports nothing from its sub-packages:

    config        a run's settings (TrainConfig), checked once
    architectures the registry of networks (one table) and its options
    models        the networks: pre-activation and wide ResNets, as the papers build them
    stacked       K seeds of one network trained as one stacked network, and split back
    recipes       the training recipes, each value with its source; the lr schedule
    data          CIFAR-10 on the device: download, checks, augmentation, batches
    engine        one optimizer step: eager, compiled, or a whole-step CUDA graph
    distributed   one run on several processes (torchrun)
    train         the loop: a run's life from settings to its last checkpoint
    rundir        a run directory: atomic writes, checkpoint first, the lock
    records       the run record and the files a run directory holds
    reference     the papers' and the seed's numbers, and our plan

The machinery beside it, each importing the core and never each other's insides:

    campaign/     a GPU slot's campaign: self-check, probe, plan within a budget, bundles
    bench/        seconds per epoch against a plain PyTorch baseline, and its records
    book/         the book's tables, figures and pages, from the records (no torch)
    launch/       papermill sweeps over networks x seeds, locally or on Slurm (submitit)
    cli           the command line, on top of all
"""

__version__ = "0.1.0"
