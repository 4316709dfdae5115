"""Training runs of both stages.

    config.py         load_training_config: the one way a config is read (run, resume, export, tests);
                      sections.py (optim/run/trainer) + stage1_config.py / stage2_config.py are the schema
    run.py            train (validate, lock the run folder, fit) and export (run → pretrained folder)
    run_folder.py     what a run folder holds, its lock, when config.yaml is written
    checkpoints.py    when checkpoints are written, every key they hold, how resume and export read them
    stage1.py         the MQ-VAE + GAN LightningModule;  stage2.py: the Stackformer one (+ token data, grids)
    common.py         peak lr, lr schedule, the manual optimisation step, throughput
    datamodule.py, sampler.py   data loading that resumes mid-epoch exactly
"""
