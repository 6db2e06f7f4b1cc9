#!/usr/bin/env python3
import sys
from coem.cli.train_vae import main
from coem.cli._common import run_cli
sys.exit(run_cli(main))
